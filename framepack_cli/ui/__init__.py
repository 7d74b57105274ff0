"""`framepack ui`: the local web app. `queue` and `files` are plain Python (no Gradio, no torch); `worker` runs
the queue through the Python API (`framepack_cli.api`); `app` is the Gradio Blocks app; `launch` the command."""
