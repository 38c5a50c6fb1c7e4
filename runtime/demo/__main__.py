"""`python -m anymodel.demo` (what `make demo` runs): the embedded adder, through the public API.

Answers held-out sums (problems the model never saw in training), checks them, and reports accuracy
and generated tokens per second.
"""

from __future__ import annotations

import time

from anymodel import LLM, SamplingParams
from anymodel.demo import addition_problems

NUM_PROBLEMS = 64
SHOWN = 8


def main() -> None:
    llm = LLM()  # no model: the demo model shipped in anymodel/demo/model
    problems = addition_problems(NUM_PROBLEMS, seed=2024)
    prompts = [prompt for prompt, _ in problems]

    start = time.perf_counter()
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    seconds = time.perf_counter() - start

    correct = 0
    for i, (out, (prompt, answer)) in enumerate(zip(outputs, problems)):
        text = out.outputs[0].text
        correct += text == answer
        if i < SHOWN:
            mark = "✓" if text == answer else f"✗ (expected {answer})"
            print(f"  {prompt:>10} {text:<6} {mark}")
    print(f"  ... {len(problems) - SHOWN} more")

    tokens = sum(len(out.outputs[0].token_ids) for out in outputs)
    print(f"accuracy: {correct}/{len(problems)} = {correct / len(problems):.1%} on held-out problems")
    print(f"generated {tokens} tokens in {seconds:.2f}s: {tokens / seconds:.0f} tokens/s "
          f"({len(prompts)} prompts in one batch)")

    chat = llm.chat([{"role": "user", "content": "12+34"}], SamplingParams(temperature=0, max_tokens=8),
                    use_tqdm=False)
    print(f'chat: user "12+34" -> assistant "{chat[0].outputs[0].text}"')


if __name__ == "__main__":
    main()
