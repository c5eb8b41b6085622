"""The model (ResNet34 members, the ensemble), the training loop and evaluation metrics.

Works on feature arrays and labels; knows nothing of queues, databases or the CLI.
"""
