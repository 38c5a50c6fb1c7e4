"""The engine: requests in, outputs out. Engine.step() = schedule -> execute -> update outputs.

    engine.py            Engine: add_request / step / abort (the step loop)
    inputs.py            prompt processing: tokenize, truncate, token types (before a request exists)
    request_checks.py    the engine-side checks of a request against the model (vocabulary, caps)
    scheduler.py         token-budget scheduling: chunked prefill, decode, preemption
    request.py           one sequence's state
    output_processor.py  sampled tokens -> stop checks, detokenized text, RequestOutputs
    detokenizer.py       incremental detokenization with stop strings
"""
