"""`scorer review`: a local web page to hear the least certain verdicts and correct them.

The corrections are labels like any other (`snippets.label`, origin `review`, logged in
`label_events`), so `scorer train` and `scorer evaluate` use them. Imported only when the
command runs: `scorer --help` never loads Starlette or uvicorn.
"""
