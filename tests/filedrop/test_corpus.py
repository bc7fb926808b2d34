"""Every multi-message file of ../shared/corpus/hl7v2-batch through the real connector and store."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.model import MessageState
from tests.conftest import corpus_dir, wait_until
from tests.filedrop.conftest import MakeHarness, drop_copy

pytestmark = pytest.mark.corpus

# file -> (messages in the file, distinct messages = rows). Repeated messages are deduplicated.
EXPECTED = {
    "oie-engine/server__tests__filereader__batch__batch01.hl7": (3, 3),
    "oie-engine/server__tests__filereader__batch__batch03.hl7": (2, 2),
    "oie-engine/server__tests__test-hl7-batch-input.txt.hl7": (1, 1),
    "oie-engine/simplesender__samples__TestADT.txt.hl7": (124, 16),
    "python-hl7/sample_batch.hl7": (1, 1),
    "python-hl7/sample_batch1.hl7": (2, 2),
    "python-hl7/sample_batch2.hl7": (2, 2),
    "python-hl7/sample_batch3.hl7": (1, 1),
    "python-hl7/sample_batch4.hl7": (1, 1),
    "python-hl7/sample_file.hl7": (1, 1),
    "python-hl7/sample_file1.hl7": (3, 2),
    "python-hl7/sample_file2.hl7": (2, 2),
    "python-hl7/sample_file3.hl7": (1, 1),
    "python-hl7/sample_file4.hl7": (1, 1),
    "python-hl7/sample_file5.hl7": (1, 1),
    "python-hl7/sample_file6.hl7": (1, 1),
}
ALL_ROWS = 24
"""Distinct messages over the whole corpus (the python-hl7 samples share messages between files)."""


def test_the_table_lists_every_corpus_file() -> None:
    root = corpus_dir("hl7v2-batch")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.hl7")) == sorted(EXPECTED)


async def test_each_corpus_file(make_harness: MakeHarness, tmp_path: Path,
                                subtests: pytest.Subtests) -> None:
    """Each file on its own node (its own store), all at once."""
    root = corpus_dir("hl7v2-batch")
    nodes = {}
    for number, relative in enumerate(sorted(EXPECTED)):
        nodes[relative] = node = await make_harness(root=tmp_path / str(number))
        drop_copy(root / relative, node.inbox)

    for relative, node in nodes.items():
        name = Path(relative).name
        messages, rows = EXPECTED[relative]
        with subtests.test(file=relative):
            wait_until(lambda node=node, name=name: node.archived(name))
            stored = node.rows()
            assert len(stored) == rows
            assert all(row.state is MessageState.STAGED for row in stored)
            assert node.received() == messages
            assert node.duplicates() == messages - rows


async def test_whole_corpus_in_one_inbox(make_harness: MakeHarness) -> None:
    root = corpus_dir("hl7v2-batch")
    node = await make_harness(start=False)
    for relative in EXPECTED:
        drop_copy(root / relative, node.inbox)
    await node.start()

    wait_until(lambda: not node.names(node.inbox))
    assert len(node.names(node.archive)) == len(EXPECTED)
    assert not node.names(node.error)
    assert node.count() == ALL_ROWS
    total = sum(messages for messages, _ in EXPECTED.values())
    assert node.received() == total
    assert node.duplicates() == total - ALL_ROWS
