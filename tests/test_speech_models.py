"""The recognisers' own parts: the CTC models' compact output layer and its id mapping."""

from __future__ import annotations

import pytest
import torch

from seqlab import registry
from seqlab.errors import DataError
from seqlab.speech.ctc import ctc_nll


@pytest.mark.parametrize("name", ["ctc-bilstm", "ctc-conformer"])
def test_ctc_compact_output_layer_scores_the_recognisers_ids(name):
    torch.manual_seed(0)
    small = {"ctc-bilstm": {"hidden_size": 16, "n_layers": 1},
             "ctc-conformer": {"d_model": 16, "n_heads": 2, "n_layers": 1, "stem_channels": 8}}[name]
    model = registry.build_for_task(name, {"vocab_size": 9, "n_mels": 12}, small, task="asr").eval()
    features, lengths = torch.randn(2, 40, 12), torch.tensor([40, 31])
    targets, target_lengths = torch.tensor([[3, 8, 8], [5, 0, 0]]), torch.tensor([3, 1])
    log_probs, out_lengths = model.log_probs(features, lengths)
    assert log_probs.shape[-1] == 9 and torch.isinf(log_probs[..., 1:3]).all()        # never BOS or EOS
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))
    torch.testing.assert_close(model.nll(features, lengths, targets, target_lengths),
                               ctc_nll(log_probs, out_lengths, targets, target_lengths))
    for bad in (1, 2, 9):
        with pytest.raises(DataError, match=f"utterance 1 of the batch: target id {bad} at position 0"):
            model.nll(features, lengths, torch.tensor([[3, 8, 8], [bad, 0, 0]]), target_lengths)


def test_word_timings_read_the_forced_alignment():
    torch.manual_seed(0)
    model = registry.build_for_task("ctc-bilstm", {"vocab_size": 9, "n_mels": 12}, {"hidden_size": 16, "n_layers": 1},
                                    task="asr").eval()
    path = [0, 4, 4, 0, 3, 5, 0, 0]                  # blank 1 1 blank space 2 blank blank: "1 2"
    log_probs = torch.full((8, 9), -9.0)
    log_probs[torch.arange(8), path] = -0.01
    model.log_probs = lambda features, lengths: (log_probs[None], torch.tensor([8]))
    timings = model.word_timings(torch.zeros(1, 16, 12), torch.tensor([16]), [[4, 3, 5]], separator_id=3,
                                 frame_seconds=0.01)                 # 16 input frames -> 8: 0.02 s a frame
    (first, start, end), (second, start2, end2) = timings[0]
    assert (first, second) == ([4], [5])
    assert (start, end, start2, end2) == pytest.approx((0.02, 0.06, 0.10, 0.12))
    assert model.word_timings(torch.zeros(1, 16, 12), torch.tensor([16]), [[]], 3, 0.01) == [[]]
