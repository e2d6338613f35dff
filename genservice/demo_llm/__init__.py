"""demo-llm, the offline demo model: an OpenAI-compatible server whose replies need no network and no key.

`wire` speaks the OpenAI chat-completions format, `app` decides the demo's reply and its pace, `config` reads its
environment, `__main__` is the program.
"""
