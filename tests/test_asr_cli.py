"""The speech recognition task from the command line: train, eval, transcribe (with a fused
n-gram language model), compare, and one clear line for every bad recording."""

from __future__ import annotations

import json
import struct
import wave

import pytest

from helpers import fails_cleanly, write_tone_digits
from seqlab.cli import main

SMALL = ["--set", "hidden_size=16", "--set", "n_layers=1", "--no-progress"]


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return write_tone_digits(tmp_path_factory.mktemp("fsdd") / "recordings", speakers=("alice",))


@pytest.fixture(scope="module")
def run(tones, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ctc"
    assert main(["train", "ctc-bilstm", "--task", "asr", "--data", str(tones), "--max-digits", "2",
                 "--test-passes", "1", "--steps", "4", "--batch-size", "4", "--out", str(out), *SMALL]) == 0
    return out


def write_wav(path, samples, *, rate=8000, channels=1):
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def test_eval_reports_error_rates_and_real_time_factor(run, capsys):
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"loss", "wer", "cer", "rtf", "utterances"} <= set(metrics) and metrics["utterances"] > 0


def test_transcribe_takes_files_after_the_run(run, tones, capsys):
    files = [str(tones / "3_alice_0.wav"), str(tones / "7_alice_1.wav")]
    capsys.readouterr()
    assert main(["transcribe", str(run), *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(set(line) <= set("0123456789 ") for line in lines)
    assert main(["transcribe", str(run), *files, "--beam-size", "3", "--length-bonus", "0.5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["transcribe", str(run), *files, "--timestamps"]) == 0
    stamped = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in stamped] == lines          # the transcript, then its words' times
    for line in stamped:
        words = line.split("\t")[1].split()
        assert [w.split("@")[0] for w in words] == line.split("\t")[0].split()


def test_transcribe_fuses_a_character_ngram_model(run, tones, tmp_path, capsys):
    text = tmp_path / "transcripts.txt"
    text.write_text("\n".join(["1 2", "3 4 5", "6 7 8 9", "0 1", "2 3 4"] * 200) + "\n", encoding="utf-8")
    lm = tmp_path / "lm"
    assert main(["train", "ngram", "--task", "lm", "--data", str(text), "--tokenizer", "char", "--context", "16", "--out", str(lm),
                 "--no-progress"]) == 0
    capsys.readouterr()
    transcripts = {}
    for weight in ("0", "20"):
        assert main(["transcribe", str(run), str(tones / "3_alice_0.wav"), "--beam-size", "4", "--lm", str(lm),
                     "--lm-weight", weight]) == 0
        transcripts[weight] = capsys.readouterr().out.splitlines()
    assert len(transcripts["0"]) == 1
    assert transcripts["20"] != transcripts["0"]                      # a heavy language model changes the output
    letters = tmp_path / "letters.txt"
    letters.write_text("abc abc\n" * 400, encoding="utf-8")
    assert main(["train", "ngram", "--task", "lm", "--data", str(letters), "--tokenizer", "char", "--context", "16",
                 "--out", str(tmp_path / "lm2"), "--no-progress"]) == 0
    fails_cleanly(capsys, ["transcribe", str(run), str(tones / "3_alice_0.wav"), "--beam-size", "2", "--lm",
                           str(tmp_path / "lm2")], "never saw the character")


def test_bad_recordings_fail_with_one_line_naming_the_file(run, tmp_path, capsys):
    text = tmp_path / "notes.wav"
    text.write_text("not audio", encoding="utf-8")
    fails_cleanly(capsys, ["transcribe", str(run), str(text)], "notes.wav")
    stereo = write_wav(tmp_path / "stereo.wav", [0, 1000] * 400, channels=2)
    fails_cleanly(capsys, ["transcribe", str(run), str(stereo)], "stereo.wav")
    empty = write_wav(tmp_path / "empty.wav", [])
    fails_cleanly(capsys, ["transcribe", str(run), str(empty)], "empty.wav")
    odd = write_wav(tmp_path / "odd.wav", [0, 1000] * 4000, rate=7919)
    fails_cleanly(capsys, ["transcribe", str(run), str(odd)], "odd.wav")
    short = write_wav(tmp_path / "short.wav", [0, 1000] * 10)
    fails_cleanly(capsys, ["transcribe", str(run), str(short)], "short.wav")
    fails_cleanly(capsys, ["transcribe", str(run), str(tmp_path / "absent.wav")], "absent.wav")


def test_a_16_khz_recording_is_resampled(run, tones, tmp_path, capsys):
    from seqlab.data.audio import FeatureConfig, load_audio, log_mel, read_wav, resample

    samples, rate = read_wav(tones / "5_alice_0.wav")
    louder = resample(samples, rate, 16000)
    path = write_wav(tmp_path / "five16k.wav", [round(32767 * float(x)) for x in louder.clamp(-1, 1)], rate=16000)
    capsys.readouterr()
    assert main(["transcribe", str(run), str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    config = FeatureConfig(sample_rate=8000)                           # what the run reads: 8 kHz frames
    at_16k = log_mel(load_audio(path, 8000), config, center=False)
    at_8k = log_mel(load_audio(tones / "5_alice_0.wav", 8000), config, center=False)
    assert at_16k.shape == at_8k.shape and (at_16k - at_8k).abs().max() < 0.05


def test_compare_tabulates_error_rates(tones, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", "--task", "asr", "--data", str(tones), "--models", "ctc-bilstm,whisper-tiny",
                 "--max-digits", "2", "--test-passes", "1", "--steps", "2", "--budget", "120", "--out", str(out),
                 "--no-progress"]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "test CER %" in report and "whisper-tiny" in report and "RTF" in report


def test_unknown_data_is_one_line(tmp_path, capsys):
    fails_cleanly(capsys, ["train", "ctc-bilstm", "--task", "asr", "--data", str(tmp_path), "--steps", "1",
                           "--out", str(tmp_path / "r")], "no FSDD recordings")


def test_a_manifest_trains_evaluates_and_names_a_bad_line(tones, tmp_path, capsys):
    lines = [f"{tones / f'{digit}_alice_{index}.wav'}\t{digit} {digit}" for digit in range(10) for index in range(3)]
    manifest = tmp_path / "train.tsv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "ctc-bilstm", "--task", "asr", "--data", str(manifest), "--steps", "2", "--batch-size", "4",
                 "--out", str(run), *SMALL]) == 0
    held_out = tmp_path / "held_out.tsv"
    held_out.write_text("3_alice_5.wav\t3\n4_alice_5.wav\t4 x\n", encoding="utf-8")      # relative paths
    (tmp_path / "3_alice_5.wav").write_bytes((tones / "3_alice_5.wav").read_bytes())
    (tmp_path / "4_alice_5.wav").write_bytes((tones / "4_alice_5.wav").read_bytes())
    fails_cleanly(capsys, ["eval", str(run), "--data", str(held_out)], "held_out.tsv:2: transcript '4 x' has 'x'")
    held_out.write_text("3_alice_5.wav\t3\nmissing.wav\t4\n", encoding="utf-8")
    fails_cleanly(capsys, ["eval", str(run), "--data", str(held_out)], "held_out.tsv:2")
    held_out.write_text("3_alice_5.wav\t3\n4_alice_5.wav\t4\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(held_out)]) == 0
    assert json.loads(capsys.readouterr().out)["utterances"] == 2
    held_out.write_text("3_alice_5.wav 3\n", encoding="utf-8")
    fails_cleanly(capsys, ["eval", str(run), "--data", str(held_out)], "held_out.tsv:1")


def test_a_streaming_transducer_reads_a_recording_in_chunks(tones, run, tmp_path, capsys):
    out = tmp_path / "rnnt"
    assert main(["train", "rnnt-conformer", "--task", "asr", "--data", str(tones), "--max-digits", "2",
                 "--test-passes", "1", "--steps", "3", "--batch-size", "4", "--out", str(out), "--no-progress",
                 "--set", "d_model=16", "--set", "n_heads=2", "--set", "n_layers=1", "--set", "stem_channels=8",
                 "--set", "predictor_size=16", "--set", "joint_size=16"]) == 0
    files = [str(tones / "3_alice_0.wav"), str(tones / "8_alice_2.wav")]
    capsys.readouterr()
    assert main(["transcribe", str(out), *files]) == 0
    whole = capsys.readouterr().out.splitlines()
    assert len(whole) == 2 and any(whole)                              # a barely trained model writes something
    for chunk in ("0.013", "0.1"):
        assert main(["transcribe", str(out), *files, "--chunk-seconds", chunk]) == 0
        assert capsys.readouterr().out.splitlines() == whole
    fails_cleanly(capsys, ["transcribe", str(run), files[0], "--chunk-seconds", "0.1"], "use an rnnt-conformer run")
