"""Audio -> features: decoding, resampling, Spleeter separation, windowing, log-mel.

Pure functions on arrays and tensors plus a loaded-once separator; knows nothing of queues or
databases, so the embedded mode and the Celery workers run the very same code.
"""
