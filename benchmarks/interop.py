"""Cached greedy generation: seqlab against transformers' ``generate``, on the same weights.

A tiny GPT-2 and a tiny Llama are built locally from configs (random weights, nothing is
downloaded), saved with ``save_pretrained`` and imported with ``seqlab.interop.hf.load_model``,
so both libraries run the same function (the script checks that the tokens agree). Each then
generates 256 new tokens greedily after a 16-token prompt, with its key/value cache: seqlab's
``model.generate(prompt, 256, temperature=0)`` (prefill, then one ``step`` per token) and
``transformers``' ``generate(max_new_tokens=256, do_sample=False, use_cache=True)``, at batch 1
and batch 8. Times are the median of alternating repeats (the machine is shared), after a
warm-up; tokens/s counts the new tokens of every row.

    python benchmarks/interop.py [--repeats 5] [--threads 2] [--quick]

Target (issue 16): seqlab at least as fast as transformers, every row of the table.
Last line: ``RESULT gpt2_generate_vs_hf=<x> llama_generate_vs_hf=<x>`` (the smaller ratio of
batch 1 and batch 8 for each architecture).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import transformers

from seqlab.interop import hf

VOCAB = 2048
PROMPT = 16


def references() -> dict[str, transformers.PreTrainedModel]:
    """The two tiny models, on the sizes of a small speech or character model."""
    gpt2 = transformers.GPT2Config(vocab_size=VOCAB, n_positions=512, n_embd=256, n_layer=4, n_head=4,
                                   bos_token_id=None, eos_token_id=None)
    llama = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                     bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return {"gpt2": transformers.GPT2LMHeadModel(gpt2).eval(), "llama": transformers.LlamaForCausalLM(llama).eval()}


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="64 new tokens, 2 repeats")
    args = parser.parse_args()
    new_tokens, repeats = (64, 2) if args.quick else (args.new_tokens, args.repeats)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows, ratios = [], {}
    for name, reference in references().items():
        with tempfile.TemporaryDirectory() as directory:
            reference.save_pretrained(directory)
            ours = hf.load_model(directory).model
        for batch in (1, 8):
            prompt = torch.randint(0, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))
            mask = torch.ones_like(prompt)

            def run_seqlab():
                return ours.generate(prompt, new_tokens, temperature=0.0)

            def run_hf():
                with torch.no_grad():
                    return reference.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens,
                                              min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                              use_cache=True, pad_token_id=0)

            agree = float((run_seqlab()[:, PROMPT:] == run_hf()[:, PROMPT:]).double().mean())   # warm-up too
            times = {"seqlab": [], "transformers": []}
            for _ in range(repeats):
                times["seqlab"].append(timed(run_seqlab))
                times["transformers"].append(timed(run_hf))
            seconds = {library: statistics.median(values) for library, values in times.items()}
            speed = {library: batch * new_tokens / value for library, value in seconds.items()}
            ratio = speed["seqlab"] / speed["transformers"]
            ratios[name] = min(ratio, ratios.get(name, float("inf")))
            rows.append((name, batch, speed["seqlab"], speed["transformers"], ratio, agree))
    print(f"cached greedy generation, {new_tokens} new tokens after {PROMPT}, {args.threads} threads, "
          f"median of {repeats}")
    print(f"{'model':<8} {'batch':>5} {'seqlab tok/s':>13} {'transformers tok/s':>19} {'ratio':>7} {'same tokens':>12}")
    for name, batch, ours_speed, theirs_speed, ratio, agree in rows:
        print(f"{name:<8} {batch:>5} {ours_speed:>13,.0f} {theirs_speed:>19,.0f} {ratio:>7.2f} {agree:>12.1%}")
    print(f"RESULT gpt2_generate_vs_hf={ratios['gpt2']:.2f} llama_generate_vs_hf={ratios['llama']:.2f}")


if __name__ == "__main__":
    main()
