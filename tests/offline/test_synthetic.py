"""The synthetic data writers: files the tasks read back exactly, and refusals of what a layout cannot hold."""

import pytest

from peft_hybrid.offline.synthetic import sentiment_sentences, write_sst2_tsv
from peft_hybrid.tasks import get_task


def test_an_sst2_tsv_reads_back_through_the_task_row_for_row(tmp_path):
    rows = sentiment_sentences(6, seed=1)
    loaded = get_task("sst2").load("validation", data_file=str(write_sst2_tsv(tmp_path / "dev.tsv", rows)))
    assert [(r["source"], r["label"]) for r in loaded] == [(r["sentence"], r["label"]) for r in rows]


@pytest.mark.parametrize("sentence", ["a\ttab", "a\nline break", "a\rreturn"])
def test_an_sst2_sentence_a_tsv_line_cannot_hold_is_refused_naming_the_record(tmp_path, sentence):
    rows = [{"sentence": "fine", "label": 1}, {"sentence": sentence, "label": 0}]
    with pytest.raises(ValueError, match="record 2: the sentence holds a tab or line break"):
        write_sst2_tsv(tmp_path / "dev.tsv", rows)
    assert not (tmp_path / "dev.tsv").exists()
