"""The document ingester's format readers and chunker (files/embedder/homelab_embedder/
documents.py) on real sample files: tests/fixtures/documents and a PDF written by hand.

Test double: ``count_double`` stands in for the model's WordPiece tokenizer (which needs the
model's files): it counts words and punctuation marks, about what WordPiece gives for plain
English, and like WordPiece its count of a joined text is the sum of its parts' counts.
"""

from __future__ import annotations

import io
import itertools
import re
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "files" / "embedder"))

from homelab_embedder import documents
from homelab_embedder.documents import Block, DocumentError, Sizes, chunk

from tests.fixtures.pdf import minimal_pdf

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "documents"


def count_double(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


def test_formats_by_suffix() -> None:
    assert documents.format_of("notes/Field.MD") == "markdown"
    assert documents.format_of("a.markdown") == "markdown"
    assert documents.format_of("page.htm") == "html"
    assert documents.format_of("paper.pdf") == "pdf"
    assert documents.format_of("readme.txt") == "text"
    assert documents.format_of("photo.jpg") is None
    assert documents.format_of(".md") is None  # a hidden name, not a suffix
    assert documents.format_of("Makefile") is None


def test_markdown_headings_code_front_matter_and_links() -> None:
    blocks = documents.read((SAMPLES / "field-notes.md").read_bytes(), "markdown")
    assert [(b.level, b.text) for b in blocks if b.level] == [
        (1, "Field notes from the river"),
        (2, "Kingfishers"),  # setext
        (2, "Nesting"),
    ]
    text = "\n".join(b.text for b in blocks)
    assert "title: Field notes" not in text and "tags:" not in text  # front matter dropped
    assert "See the survey for\nthe counts of each spring." in text  # link text, no URL
    assert "https://example.org" not in text and "**" not in text
    # The fenced code is one block, kept as written (its blank line included).
    assert Block("def count(birds):\n\n    return len(birds)") in blocks
    assert blocks[-1].text.startswith("Sand martins dig their burrows")


def test_plain_text_paragraphs_with_windows_line_ends() -> None:
    blocks = documents.read((SAMPLES / "notes.txt").read_bytes(), "text")
    assert blocks == [
        Block("Plain text notes.\nSecond line of the first paragraph."),
        Block("A second paragraph about tides and the moon."),
    ]


def test_html_drops_script_style_and_head_keeps_structure() -> None:
    blocks = documents.read((SAMPLES / "page.html").read_bytes(), "html")
    text = "\n".join(b.text for b in blocks)
    for absent in ("tracking", "font-family", "also not content", "enable scripts", "loaf"):
        assert absent not in text, absent
    assert [(b.level, b.text) for b in blocks if b.level] == [(1, "Sourdough"), (2, "Baking")]
    # Line ends of the source are spaces; <br> keeps its line; entities are decoded.
    assert Block("A starter is flour and water that wild yeast has colonised.\nFeed it daily.") in (
        blocks
    )
    assert Block("500 g flour") in blocks and Block("350 g water") in blocks
    assert Block("250 C for 20 min\n230 C for 25 min") in blocks  # <pre> as written
    assert Block("Home") in blocks


def test_html_title_heads_a_body_without_its_own_top_heading() -> None:
    html = "<html><head><title>Tide &amp; moon</title></head><body><p>Spring tides.</p></body>"
    assert documents.read_html(html) == [Block("Tide & moon", 1), Block("Spring tides.")]


def test_undecodable_text_is_read_as_windows_1252() -> None:
    assert documents.read("caf\xe9 cr\xe8me".encode("cp1252"), "text") == [Block("café crème")]
    assert documents.read("\ufeffBOM first".encode(), "text") == [Block("BOM first")]


def test_pdf_pages_become_paragraphs() -> None:
    data = minimal_pdf(
        [
            ["The heron fishes at dawn.", "It waits (patiently) by the reeds."],
            ["Second page: kingfishers dive."],
        ]
    )
    assert len(PdfReader(io.BytesIO(data), strict=True).pages) == 2  # a valid PDF
    pages_seen: list[int] = []
    blocks = documents.read(data, "pdf", alive=lambda: pages_seen.append(1))
    assert blocks == [
        Block("The heron fishes at dawn. It waits (patiently) by the reeds."),
        Block("Second page: kingfishers dive."),
    ]
    assert len(pages_seen) == 2  # the watchdog is fed between pages


def test_damaged_and_encrypted_pdfs_are_document_errors() -> None:
    with pytest.raises(DocumentError) as damaged:
        documents.read(b"%PDF-1.4\nthis is not a PDF body", "pdf")
    assert damaged.value.reason == "unreadable"
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(minimal_pdf([["secret plans"]]))))
    writer.encrypt("a password", algorithm="RC4-128")
    encrypted = io.BytesIO()
    writer.write(encrypted)
    with pytest.raises(DocumentError) as locked:
        documents.read(encrypted.getvalue(), "pdf")
    assert locked.value.reason == "encrypted"


# --- chunking --------------------------------------------------------------------------------


def _sentences(n: int, topic: str = "river") -> str:
    return " ".join(f"Sentence {i} about the {topic} has exactly nine tokens." for i in range(n))


def test_default_sizes_fit_the_models_window() -> None:
    sizes = Sizes()
    # all-MiniLM-L6-v2 reads 256 word pieces, [CLS] and [SEP] included.
    assert (sizes.max_tokens, sizes.overlap_tokens, sizes.min_tokens) == (200, 32, 48)
    assert sizes.max_tokens <= 256 - 2
    with pytest.raises(ValueError, match="overlap of 150 tokens"):
        Sizes(max_tokens=200, overlap_tokens=150)


def test_short_paragraphs_share_a_chunk_and_nothing_is_lost() -> None:
    blocks = [Block(f"Paragraph {i} is short.") for i in range(6)]
    (only,) = chunk(blocks, count_double, Sizes(200, 32, 48))
    assert only.text == "\n\n".join(b.text for b in blocks)
    assert only.tokens == count_double(only.text) == 30


def test_long_text_is_cut_at_sentences_with_overlap_within_the_limit() -> None:
    sizes = Sizes(max_tokens=60, overlap_tokens=20, min_tokens=10)
    text = _sentences(30)
    chunks = chunk([Block("Title", 1), Block(text)], count_double, sizes)
    assert len(chunks) > 4
    for c in chunks:
        assert count_double(c.text) == c.tokens <= sizes.max_tokens, c
        assert c.heading == "Title"
    for before, after in itertools.pairwise(chunks):
        # Each chunk starts with the last whole sentence(s) of the one before, at most 20 tokens.
        last = documents.sentences(before.text)[-2:]
        overlap = " ".join(last) if count_double(" ".join(last)) <= 20 else last[-1]
        assert after.text.startswith(overlap), (before.text[-80:], after.text[:80])
        assert count_double(overlap) <= sizes.overlap_tokens
    # Every sentence is in some chunk, in order.
    seen = [s for c in chunks for s in documents.sentences(c.text)]
    wanted = documents.sentences(text)
    assert [s for s in dict.fromkeys(seen) if s != "Title"] == wanted


def test_a_heading_starts_a_chunk_unless_the_current_one_is_tiny() -> None:
    sizes = Sizes(max_tokens=80, overlap_tokens=10, min_tokens=12)
    blocks = [
        Block("Intro", 1),
        Block("Short."),  # under min_tokens: the next heading joins it
        Block("Part one", 2),
        Block(_sentences(3, "heron")),
        Block("Part two", 2),
        Block(_sentences(2, "kingfisher")),
    ]
    chunks = chunk(blocks, count_double, sizes)
    assert [c.text.split("\n\n")[0] for c in chunks] == ["Intro", "Part two"]
    assert chunks[0].heading == "Intro" and chunks[1].heading == "Part two"
    # No overlap across a heading: the new section starts clean.
    assert "heron" not in chunks[1].text


def test_a_sentence_longer_than_a_chunk_is_cut_at_words_and_a_huge_word_at_letters() -> None:
    sizes = Sizes(max_tokens=20, overlap_tokens=0, min_tokens=0)
    long_sentence = " ".join(f"w{i}" for i in range(55))
    blob = "x" * 500  # one "word": a hash, base64
    chunks = chunk([Block(long_sentence)], count_double, sizes)

    def long_count(text: str) -> int:  # the double counts every 10 letters of a word as one
        return sum(max(1, len(w) // 10) for w in re.findall(r"\w+|[^\w\s]", text))

    sliced = chunk([Block(blob)], long_count, sizes)
    assert [c.tokens for c in chunks] == [20, 20, 15]
    assert " ".join(c.text for c in chunks) == long_sentence
    assert all(long_count(c.text) <= 20 for c in sliced)
    assert "".join(c.text for c in sliced) == blob


def test_sample_documents_chunk_within_the_default_sizes() -> None:
    for name, fmt in (("field-notes.md", "markdown"), ("page.html", "html")):
        blocks = documents.read((SAMPLES / name).read_bytes(), fmt)
        chunks = chunk(blocks, count_double)
        assert chunks and all(c.tokens <= 200 for c in chunks), name
        text = " ".join(c.text for c in chunks)
        assert "heron" in text or "starter" in text
