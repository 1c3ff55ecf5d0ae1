"""The speech recognition task: FSDD splits, connected utterances, the vocabulary, the metrics,
batches, evaluation and transcription, over a miniature FSDD of tones (and the real one when
../shared/data/fsdd is present)."""

from __future__ import annotations

import pytest
import torch

from helpers import write_tone_digits
from seqlab import registry
from seqlab.data.spoken_digits import connect, find_fsdd, list_recordings, random_groups, split_recordings
from seqlab.errors import ConfigError, DataError
from seqlab.metrics.speech import error_rates
from seqlab.speech.vocabulary import SymbolVocabulary
from seqlab.tasks.asr import SpeechOptions, SpeechRecognition, TranscribeOptions


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return write_tone_digits(tmp_path_factory.mktemp("fsdd") / "recordings")


@pytest.fixture(scope="module")
def task(tones):
    return SpeechRecognition.from_options(SpeechOptions(data=str(tones.parent), split="official", max_digits=3))


def test_official_split_keeps_recordings_0_to_4_for_test(tones):
    parts = split_recordings(list_recordings(tones), "official")
    assert {r.index for r in parts["test"]} == set(range(5))
    assert {r.index for r in parts["valid"]} == {5, 6, 7}
    assert {r.index for r in parts["train"]} == {8, 9}
    assert len(parts["test"]) == 2 * 10 * 5


def test_speaker_split_holds_one_speaker_out(tones):
    parts = split_recordings(list_recordings(tones), "speaker", "bob")
    assert {r.speaker for r in parts["test"]} == {"bob"} and len(parts["test"]) == 100
    assert {r.speaker for r in parts["train"] + parts["valid"]} == {"alice"}
    with pytest.raises(DataError, match="'theo' has no recordings; the speakers are alice, bob"):
        split_recordings(list_recordings(tones), "speaker", "theo")


def test_real_fsdd_splits(shared_data):
    recordings = list_recordings(find_fsdd(str(shared_data / "fsdd")))
    assert len(recordings) == 3000
    official = split_recordings(recordings, "official")
    assert len(official["test"]) == 300 and len(official["train"]) + len(official["valid"]) == 2700
    speaker = split_recordings(recordings, "speaker")
    assert len(speaker["test"]) == 500 and {r.speaker for r in speaker["test"]} == {"theo"}


def test_groups_cover_every_recording_once_per_pass():
    groups = random_groups(23, 7, 2, torch.Generator().manual_seed(0))
    assert all(1 <= len(group) <= 7 for group in groups)
    assert sorted(i for group in groups for i in group) == sorted(list(range(23)) * 2)


def test_connect_places_each_digit_where_its_span_says():
    waveforms = [torch.ones(800), -torch.ones(400)]
    utterance = connect(waveforms, [4, 2], 8000, torch.Generator().manual_seed(0), snr_db=(200.0, 200.0))
    assert utterance.transcript == "4 2"
    (start, end), (start2, end2) = utterance.spans
    assert end - start == pytest.approx(0.1) and end2 - start2 == pytest.approx(0.05)
    first = utterance.samples[round(start * 8000):round(end * 8000)]
    assert torch.allclose(first, first[0].expand_as(first), atol=1e-6) and first[0] > 0.29
    assert utterance.samples[:round(start * 8000)].abs().max() < 1e-6          # silence before


def test_unknown_data_and_bad_file_names_are_clear(tmp_path):
    with pytest.raises(DataError, match="no FSDD recordings"):
        find_fsdd(str(tmp_path))
    (tmp_path / "hello.wav").write_bytes(b"")
    with pytest.raises(DataError, match="hello.wav: not an FSDD file name"):
        list_recordings(tmp_path)


def test_vocabulary_round_trip_and_errors(tmp_path):
    vocabulary = SymbolVocabulary.build(["1 2", "30"])
    assert vocabulary.characters == [" ", "0", "1", "2", "3"] and vocabulary.size == 8
    assert vocabulary.encode("  3  1 ", "x") == [7, 3, 5]
    assert vocabulary.decode([7, 0, 3, 5, 2]) == "3 1"
    with pytest.raises(DataError, match=r"a.wav: transcript '3 x' has 'x', outside the vocabulary"):
        vocabulary.encode("3 x", "a.wav")
    with pytest.raises(DataError, match="b.wav: the transcript is empty"):
        vocabulary.encode("  ", "b.wav")
    vocabulary.save(tmp_path / "v.json")
    assert SymbolVocabulary.load(tmp_path / "v.json").characters == vocabulary.characters


def test_error_rates_are_jiwers_corpus_rates():
    rates = error_rates(["1 2 3", "4 5"], ["1 3", "4 5 6"])
    assert rates["wer"] == pytest.approx(2 / 5)                      # one deletion, one insertion
    assert rates["cer"] == pytest.approx(4 / 8)                      # "2 " deleted, " 6" inserted
    with pytest.raises(DataError, match="2 references but 1 hypotheses"):
        error_rates(["1", "2"], ["1"])


def test_batches_and_fixed_splits(task):
    batch = task.train_batch(4, torch.Generator().manual_seed(0))
    frames, lengths, targets, target_lengths = batch
    assert frames.shape[0] == 4 and frames.shape[2] == 40 and int(lengths.max()) == frames.shape[1]
    assert task.loss_items(batch) == int(target_lengths.sum())
    transcripts = [task.vocabulary.decode(row[:n].tolist()) for row, n in zip(targets, target_lengths.tolist())]
    assert all(len(t.split()) == len(transcripts[0].split()) for t in transcripts)   # one digit count a batch
    assert all(set(t) <= set("0123456789 ") and t == " ".join(t.split()) for t in transcripts)
    again = task.train_batch(4, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batch, again))
    test = task._split("test")
    heard = sum(len(t.split()) for t in test.transcripts)
    assert heard == 100 * task.options.test_passes                   # every test recording, each pass
    assert task.model_defaults() == {"vocab_size": 14, "n_mels": 40}


def test_evaluate_and_transcribe_an_untrained_model(task, tones):
    torch.manual_seed(0)
    model = registry.build_for_task("ctc-bilstm", task.model_defaults(), {"hidden_size": 16, "n_layers": 1},
                                    task="asr")
    metrics = task.evaluate(model, "valid", max_batches=1)
    assert set(metrics) >= {"loss", "wer", "cer", "rtf", "utterances"} and metrics["loss"] > 0
    outputs = task.predict(model, [str(tones / "3_alice_0.wav"), str(tones / "4_bob_1.wav")])
    assert len(outputs) == 2 and all(set(text) <= set("0123456789 ") for text in outputs)
    with pytest.raises(DataError, match="nothing.wav"):
        task.predict(model, [str(tones / "nothing.wav")])


def test_options_are_checked():
    with pytest.raises(ConfigError, match="max_digits must be >= 1"):
        SpeechOptions(max_digits=0)
    with pytest.raises(ConfigError, match=r"sample_rate must be in \[4000, 192000\] Hz, got 1000"):
        SpeechOptions(sample_rate=1000)


def test_a_decoder_too_short_for_the_transcripts_is_refused_before_training(task):
    model = registry.build_for_task("whisper-tiny", task.model_defaults(), {"max_target_len": 4, "d_model": 16,
                                    "n_heads": 2, "d_ff": 16}, task="asr")
    with pytest.raises(ConfigError, match="max_target_len is 4 but this task's transcripts run to 5 characters"):
        task.check_model(model)


def test_timestamps_are_for_ctc_models(task, tones):
    model = registry.build_for_task("whisper-tiny", task.model_defaults(), {"d_model": 16, "n_heads": 2, "d_ff": 16},
                                    task="asr")
    with pytest.raises(ConfigError, match="timestamps come from a CTC forced alignment"):
        task.predict(model, [str(tones / "3_alice_0.wav")], TranscribeOptions(timestamps=True))
