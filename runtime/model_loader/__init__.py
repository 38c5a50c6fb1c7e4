"""One model loader: which implementation runs a model (a decision table, rules.py), building it
(build.py), and the load-time transforms applied to the built model (transforms.py).

    decision = decide(args, config, model_dir, parallel_state)
    decision.impl, decision.reason, decision.cls      # "native", "native LlamaForCausalLM: ...", cls
    model = load_model(args, model_dir, config, device, parallel_state, backend)

`anymodel inspect MODEL` prints the same table (every rule, whether it applies, why) without
loading weights; the worker logs the winner ("anymodel: <impl> for <arch>: <reason>").
"""

from anymodel.model_loader.build import load_model, self_checked
from anymodel.model_loader.rules import RULES, Decision, Rule, Verdict, decide, evaluate

__all__ = ["RULES", "Decision", "Rule", "Verdict", "decide", "evaluate", "load_model", "self_checked"]
