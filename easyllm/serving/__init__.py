"""What the chat server (easyllm/serve.py) checks: who may call it and what a request may ask."""
