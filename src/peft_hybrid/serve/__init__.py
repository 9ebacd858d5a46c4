"""Serving: one base, many task adapters, behind TGI's HTTP API and OpenAI-compatible routes (extra ``serve``).

``peft-hybrid serve --base MODEL --adapter NAME=PATH_OR_REPO ...`` (or ``python -m peft_hybrid.serve``)
answers ``huggingface_hub.InferenceClient`` unchanged; ``parameters.adapter_id`` picks the adapter
per request, and requests for different adapters share one mixed-task batch.

- `peft_hybrid.serve.formatting`: the one place that turns a request into model input and output into text;
- `peft_hybrid.serve.requests`: the request body, validated field by field;
- `peft_hybrid.serve.batcher` / `peft_hybrid.serve.engine`: the queue, its worker, one batch's generation;
- `peft_hybrid.serve.adapters`: which adapter ids are served, lazy and runtime loading, allow patterns, LRU eviction;
- `peft_hybrid.serve.grammar`: structured output (a regex or JSON schema per row);
- `peft_hybrid.serve.app`: what both protocols share; `peft_hybrid.serve.tgi` and `peft_hybrid.serve.openai`
  (with `peft_hybrid.serve.openai_requests` and `peft_hybrid.serve.adapter_routes`): the routes;
- `peft_hybrid.serve.server`: startup and graceful shutdown.

Example::

    from huggingface_hub import InferenceClient
    client = InferenceClient(base_url="http://127.0.0.1:8080")
    client.text_generation("Amy: see you at 5? Ben: sure!", adapter_id="samsum", max_new_tokens=32)
"""
