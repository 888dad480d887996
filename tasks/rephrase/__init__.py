"""Caption rephrasing: one interface over template, transformers, OpenAI-compatible and vLLM backends.

Kept import-light: each backend module is imported only when ``base.make_backend`` asks for it, so a
CPU install never imports torch or vllm to run the template backend.
"""
