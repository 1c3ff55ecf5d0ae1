"""Structured prediction: seqlab's HMM against hmmlearn, and its CRF layer against pytorch-crf.

- HMM: forward-backward and one Baum-Welch M-step (``HiddenMarkovModel.em_step``) over 1,000
  sequences of length 200, 16 states, 32 symbols, against ``hmmlearn.hmm.CategoricalHMM.fit``
  with ``n_iter=1`` from the same parameters (its default log-space implementation; its scaled
  one is reported too). seqlab runs in float32 (torch's default) and float64 (hmmlearn's).
- CRF: log-likelihood with its backward pass, and Viterbi decoding, batch 64, length up to 50
  (random lengths from 25), 20 tags, against ``torchcrf.CRF`` with the same parameters.

Each side runs alternately; the median time of each counts. Both sides get the same number of
CPU threads (``--threads``, 1 by default: hmmlearn is single-threaded).

    python benchmarks/structured.py [--quick] [--threads N]

Targets (issue 5): hmm_em_vs_hmmlearn >= 20, crf_nll_vs_pytorch_crf >= 3,
crf_viterbi_vs_pytorch_crf >= 4.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from hmmlearn import hmm as hmmlearn
from torchcrf import CRF

from seqlab.classical.crf import LinearChainCRF
from seqlab.classical.emissions import CategoricalEmission
from seqlab.classical.hmm import HiddenMarkovModel

N_SEQUENCES, LENGTH, N_STATES, N_SYMBOLS = 1_000, 200, 16, 32
CRF_BATCH, CRF_LENGTH, N_TAGS = 64, 50, 20


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def alternate(ours, theirs, repeats: int, rounds: int) -> tuple[float, float]:
    """Median times of two callables, ``rounds`` alternations of ``repeats`` runs each."""
    ours(), theirs()                                                        # warm up
    our_times, their_times = [], []
    for _ in range(rounds):
        our_times.append(median_seconds(ours, repeats))
        their_times.append(median_seconds(theirs, repeats))
    return statistics.median(our_times), statistics.median(their_times)


def hmm_models(dtype: torch.dtype) -> tuple[HiddenMarkovModel, hmmlearn.CategoricalHMM, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    ours = HiddenMarkovModel(CategoricalEmission(N_STATES, N_SYMBOLS))
    _, symbols = ours.sample(N_SEQUENCES, LENGTH, torch.Generator().manual_seed(1))   # (B, T)
    ours = ours.to(dtype)
    theirs = hmmlearn.CategoricalHMM(n_components=N_STATES, n_features=N_SYMBOLS, n_iter=1, tol=0,
                                     init_params="", params="ste")
    return ours, theirs, symbols, symbols.reshape(-1, 1).numpy()


def set_hmmlearn(theirs: hmmlearn.CategoricalHMM, ours: HiddenMarkovModel, snapshot: dict) -> None:
    ours.load_state_dict(snapshot)
    theirs.startprob_ = ours.log_init().exp().detach().double().numpy()
    theirs.transmat_ = ours.log_transitions().exp().detach().double().numpy()
    theirs.emissionprob_ = ours.emission.log_probs().exp().detach().double().numpy()


def bench_hmm(repeats: int, rounds: int) -> list[tuple[str, float, float]]:
    rows = []
    lengths = [LENGTH] * N_SEQUENCES
    for dtype, implementations in ((torch.float32, ("log", "scaling")), (torch.float64, ("log",))):
        ours, theirs, symbols, flat = hmm_models(dtype)
        snapshot = {key: value.clone() for key, value in ours.state_dict().items()}

        def run_ours():
            ours.load_state_dict(snapshot)
            ours.em_step(symbols)

        for implementation in implementations:
            theirs.implementation = implementation

            def run_theirs():
                set_hmmlearn(theirs, ours, snapshot)
                theirs.fit(flat, lengths)

            our_seconds, their_seconds = alternate(run_ours, run_theirs, repeats, rounds)
            name = {torch.float32: "float32", torch.float64: "float64"}[dtype]
            rows.append((f"HMM forward-backward + EM step, seqlab {name} vs hmmlearn ({implementation})",
                         our_seconds, their_seconds))
        if dtype == torch.float64:   # a check that both sides do the same work
            theirs.implementation = "log"
            set_hmmlearn(theirs, ours, snapshot)
            theirs.fit(flat, lengths)
            run_ours()
            gap = np.abs(ours.log_transitions().exp().detach().numpy() - theirs.transmat_).max()
            print(f"  float64 EM step: largest difference from hmmlearn's new transitions {gap:.1e}")
    return rows


def bench_crf(repeats: int, rounds: int) -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    theirs = CRF(N_TAGS, batch_first=True)
    ours = LinearChainCRF(N_TAGS)
    with torch.no_grad():
        ours.start_scores.copy_(theirs.start_transitions)
        ours.end_scores.copy_(theirs.end_transitions)
        ours.transition_scores.copy_(theirs.transitions)
    emissions = torch.randn(CRF_BATCH, CRF_LENGTH, N_TAGS, requires_grad=True)
    tags = torch.randint(0, N_TAGS, (CRF_BATCH, CRF_LENGTH))
    lengths = torch.randint(CRF_LENGTH // 2, CRF_LENGTH + 1, (CRF_BATCH,))
    lengths[0] = CRF_LENGTH
    mask = torch.arange(CRF_LENGTH) < lengths[:, None]

    def nll(model):
        def run():
            loss = -model(emissions, tags, mask).sum() if model is ours else -model(emissions, tags, mask, reduction="sum")
            loss.backward()
            emissions.grad = None
        return run

    with torch.no_grad():
        torch.testing.assert_close(ours(emissions, tags, mask), theirs(emissions, tags, mask, reduction="none"))
        assert ours.decode(emissions, mask)[0][mask].tolist() == sum(theirs.decode(emissions, mask), [])
    our_nll, their_nll = alternate(nll(ours), nll(theirs), repeats, rounds)

    @torch.no_grad()
    def decode(model):
        return lambda: model.decode(emissions, mask)

    our_decode, their_decode = alternate(decode(ours), decode(theirs), repeats, rounds)
    return [("CRF log-likelihood + backward vs pytorch-crf", our_nll, their_nll),
            ("CRF Viterbi vs pytorch-crf", our_decode, their_decode)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under a minute)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="hmmlearn")
    hmm_repeats, hmm_rounds = (1, 3) if args.quick else (1, 5)
    crf_repeats, crf_rounds = (10, 3) if args.quick else (30, 5)
    print(f"torch {torch.__version__}, {args.threads} thread(s); seconds are medians per call")
    rows = bench_hmm(hmm_repeats, hmm_rounds) + bench_crf(crf_repeats, crf_rounds)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'benchmark':<{width}}  {'seqlab s':>10}  {'peer s':>10}  {'speed-up':>8}")
    for name, ours, theirs in rows:
        print(f"{name:<{width}}  {ours:>10.5f}  {theirs:>10.5f}  {theirs / ours:>7.1f}x")
    hmm_ratio = rows[0][2] / rows[0][1]
    print(f"RESULT hmm_em_vs_hmmlearn={hmm_ratio:.1f} crf_nll_vs_pytorch_crf={rows[-2][2] / rows[-2][1]:.1f} "
          f"crf_viterbi_vs_pytorch_crf={rows[-1][2] / rows[-1][1]:.1f}")


if __name__ == "__main__":
    main()
