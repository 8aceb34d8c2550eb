"""Documents to memory chunks: format readers and the chunker of the document ingester.

A reader turns a file's bytes into blocks: headings (with their level) and paragraphs, in
document order. Markdown (ATX and setext headings, fenced code kept whole, YAML front matter
dropped, links reduced to their text), plain text (paragraphs at blank lines), HTML (the
standard library's parser: block elements end paragraphs, h1-h6 are headings, script, style
and other non-content elements are dropped) and PDF (pypdf's text extraction, page by page).

The chunker packs blocks into chunks that fit the embedding model's window: whole paragraphs
while they fit ``max_tokens``, a paragraph too long for one chunk split at sentences (at words
as a last resort). A heading starts a new chunk unless the current one is still under
``min_tokens`` (tiny sections stay together). Within a section, each chunk after the first
starts with the last whole sentences of the one before, up to ``overlap_tokens``, so a
thought cut at a chunk boundary is found from either side. Token counts come from a function
the caller gives (the model's own WordPiece tokenizer in the service): BERT's tokenizer splits
at whitespace first, so the count of a joined text is the sum of its parts' counts.

Standard library only, but for pypdf, imported when a PDF is read.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import ClassVar

# File name suffix (lower case) -> format. Anything else in the inbox is not a document.
FORMATS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}

Count = Callable[[str], int]


class DocumentError(ValueError):
    """The file cannot be read as its format says (damaged, encrypted, not text)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Block:
    """A heading (``level`` 1-6) or a paragraph (``level`` 0) of a document."""

    text: str
    level: int = 0


@dataclass(frozen=True)
class Chunk:
    text: str
    heading: str | None
    tokens: int


@dataclass(frozen=True)
class Sizes:
    """Chunk sizes in model tokens (special tokens not counted)."""

    max_tokens: int = 200
    overlap_tokens: int = 32
    min_tokens: int = 48

    def __post_init__(self) -> None:
        if not 0 <= self.overlap_tokens <= self.max_tokens // 2:
            raise ValueError(
                f"overlap of {self.overlap_tokens} tokens: expected 0 to half of the chunk"
                f" size ({self.max_tokens // 2})"
            )
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"minimum of {self.min_tokens} tokens exceeds {self.max_tokens}")


def format_of(name: str) -> str | None:
    """The document format of a file name (by suffix), None when it is not a document."""
    dot = name.rfind(".")
    return FORMATS.get(name[dot:].lower()) if dot > 0 else None


def decode(data: bytes) -> str:
    """Text of a text file: UTF-8 (a BOM is dropped), else Windows-1252 with replacements."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read(data: bytes, fmt: str, alive: Callable[[], None] = lambda: None) -> list[Block]:
    """The blocks of a document of format ``fmt``; ``alive`` is called between PDF pages."""
    if fmt == "markdown":
        return read_markdown(decode(data))
    if fmt == "text":
        return read_text(decode(data))
    if fmt == "html":
        return read_html(decode(data))
    if fmt == "pdf":
        return read_pdf(data, alive)
    raise ValueError(f"unknown format {fmt!r}")


def _paragraphs(text: str) -> list[str]:
    """Paragraphs at blank lines, each with its lines' ends kept and outer space stripped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def read_text(text: str) -> list[Block]:
    return [Block(p) for p in _paragraphs(text)]


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")


def _inline(text: str) -> str:
    """Markdown's inline markup reduced to its text: images to their alt text, links to
    their text, strong emphasis unmarked."""
    return _STRONG.sub(r"\2", _LINK.sub(r"\1", _IMAGE.sub(r"\1", text)))


def _without_front_matter(lines: list[str]) -> list[str]:
    if lines and lines[0].strip() == "---":
        for end, line in enumerate(lines[1:60], start=1):
            if line.strip() in ("---", "..."):
                return lines[end + 1 :]
    return lines


def read_markdown(text: str) -> list[Block]:
    lines = _without_front_matter(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    blocks: list[Block] = []
    paragraph: list[str] = []
    fence: str | None = None

    def flush(raw: bool = False) -> None:
        body = "\n".join(paragraph).strip("\n")
        if body.strip():
            blocks.append(Block(body if raw else _inline(body.strip())))
        paragraph.clear()

    for line in lines:
        if fence is not None:
            if line.strip().startswith(fence):
                flush(raw=True)  # code stays as written
                fence = None
            else:
                paragraph.append(line)
            continue
        if match := _FENCE.match(line):
            flush()
            fence = match.group(1)[0] * 3
        elif match := _ATX.match(line):
            flush()
            if match.group(2):
                blocks.append(Block(_inline(match.group(2).strip()), len(match.group(1))))
        elif paragraph and _SETEXT.match(line):
            heading = _inline(" ".join(part.strip() for part in paragraph))
            paragraph.clear()
            blocks.append(Block(heading, 1 if line.strip()[0] == "=" else 2))
        elif not line.strip() or _BREAK.match(line):
            flush()
        else:
            paragraph.append(line)
    flush(raw=fence is not None)
    return blocks


class _HtmlText(HTMLParser):
    """Blocks of an HTML document: the text of block elements, headings with their level, and
    the <title> of its <head> (the rest of the head is not content)."""

    SKIPPED = frozenset(
        {"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "select"}
    )
    BLOCKS = frozenset(
        {
            "p", "div", "section", "article", "main", "header", "footer", "nav", "aside",
            "blockquote", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "caption",
            "figure", "figcaption", "form", "fieldset", "address", "details", "summary",
            "body", "html",
        }
    )  # fmt: skip
    HEADINGS: ClassVar[dict[str, int]] = {f"h{n}": n for n in range(1, 7)}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title: str | None = None
        self._text: list[str] = []
        self._title: list[str] | None = None  # while inside <title>
        self._skip = 0  # depth inside skipped elements
        self._head = False
        self._pre = 0
        self._level = 0

    def flush(self) -> None:
        text = "".join(self._text)
        if self._pre:
            text = text.strip("\n")
        else:
            text = re.sub(r" ?\n ?", "\n", re.sub(r"[ \t\r\f\v]+", " ", text)).strip()
        if text.strip():
            self.blocks.append(Block(text, self._level))
        self._text = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIPPED:
            self._skip += 1
        elif self._skip:
            return
        elif tag == "head":
            self._head = True
        elif tag == "title" and self.title is None:
            self._title = []
        elif tag in self.HEADINGS:
            self.flush()
            self._level = self.HEADINGS[tag]
        elif tag == "pre":
            self.flush()
            self._pre += 1
        elif tag in self.BLOCKS or tag == "hr":
            self.flush()
        elif tag == "br":
            self._text.append("\n")
        elif tag in ("td", "th"):
            self._text.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "hr"):
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif self._skip:
            return
        elif tag == "head":
            self._head = False
        elif tag == "title" and self._title is not None:
            self.title = re.sub(r"\s+", " ", "".join(self._title)).strip() or None
            self._title = None
        elif tag in self.HEADINGS:
            self.flush()
            self._level = 0
        elif tag == "pre":
            self.flush()
            self._pre = max(0, self._pre - 1)
        elif tag in self.BLOCKS:
            self.flush()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._title is not None:
            self._title.append(data)
        elif not self._head:
            # Line ends in the source are spaces; only <br> and <pre> keep lines.
            self._text.append(data if self._pre else re.sub(r"\s", " ", data))


def read_html(text: str) -> list[Block]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser.flush()
    blocks = parser.blocks
    # The <title> heads the document unless the body has its own top heading.
    if parser.title and not any(block.level == 1 for block in blocks):
        blocks.insert(0, Block(parser.title, 1))
    return blocks


def read_pdf(data: bytes, alive: Callable[[], None] = lambda: None) -> list[Block]:
    """Paragraphs of each page's text (pypdf); words hyphenated across lines joined."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError("encrypted", "the PDF is encrypted with a password")
        blocks: list[Block] = []
        for page in reader.pages:
            alive()
            text = page.extract_text() or ""
            text = re.sub(r"(?<=[a-z])-\n(?=[a-z])", "", text)
            for paragraph in _paragraphs(text):
                blocks.append(Block(re.sub(r"[ \t]*\n[ \t]*", " ", paragraph)))
        return blocks
    except DocumentError:
        raise
    except (FileNotDecryptedError, DependencyError, NotImplementedError) as error:
        # A password, or an encryption pypdf cannot open without optional packages.
        raise DocumentError("encrypted", f"the PDF cannot be decrypted: {error}") from error
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as error:
        # pypdf raises its own errors and plain ones on damaged files.
        raise DocumentError("unreadable", f"not a readable PDF: {error}") from error


# --- chunking ------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\n+")


def sentences(text: str) -> list[str]:
    """Sentences of a paragraph (at . ! ? followed by space, and at line ends)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _cut(word: str, count: Count, limit: int) -> list[str]:
    """A "word" over ``limit`` tokens (a URL, a hash, base64) in slices that fit."""
    slices: list[str] = []
    while word:
        size = len(word)
        while size > 1 and count(word[:size]) > limit:
            size = max(1, size * limit // max(1, count(word[:size])) - 1)
        slices.append(word[:size])
        word = word[size:]
    return slices


def _words(text: str, count: Count, limit: int) -> list[str]:
    """``text`` cut at spaces into runs of at most ``limit`` tokens."""
    pieces: list[str] = []
    current: list[str] = []
    tokens = 0
    for word in text.split():
        n = count(word)
        if n > limit:
            if current:
                pieces.append(" ".join(current))
                current, tokens = [], 0
            pieces += _cut(word, count, limit)
            continue
        if current and tokens + n > limit:
            pieces.append(" ".join(current))
            current, tokens = [], 0
        current.append(word)
        tokens += n
    if current:
        pieces.append(" ".join(current))
    return pieces


def _fitting(text: str, count: Count, limit: int) -> list[tuple[str, str, int]]:
    """(separator before, text, tokens) pieces of a paragraph, each at most ``limit`` tokens:
    the paragraph whole, else its sentences, else word runs."""
    n = count(text)
    if n <= limit:
        return [("\n\n", text, n)]
    pieces: list[tuple[str, str, int]] = []
    for sentence in sentences(text):
        m = count(sentence)
        if m <= limit:
            pieces.append((" ", sentence, m))
        else:
            pieces += [(" ", part, count(part)) for part in _words(sentence, count, limit)]
    if pieces:
        pieces[0] = ("\n\n", *pieces[0][1:])
    return pieces


def _tail(pieces: list[tuple[str, str, int]], count: Count, budget: int) -> list:
    """The last whole sentences of ``pieces`` that fit ``budget`` tokens (the overlap)."""
    taken: list[tuple[str, str, int]] = []
    for separator, text, n in reversed(pieces):
        if n <= budget:
            taken.insert(0, (separator, text, n))
            budget -= n
            continue
        for sentence in reversed(sentences(text)):
            m = count(sentence)
            if m > budget:
                break
            taken.insert(0, (" ", sentence, m))
            budget -= m
        break
    return taken


def _join(pieces: Iterable[tuple[str, str, int]]) -> str:
    return "".join(sep + text for sep, text, _ in pieces).strip()


def chunk(blocks: Iterable[Block], count: Count, sizes: Sizes = Sizes()) -> list[Chunk]:
    """Chunks of ``blocks``: see the module's docstring for the rules."""
    chunks: list[Chunk] = []
    pieces: list[tuple[str, str, int]] = []
    fresh = 0  # pieces of the current chunk not carried over from the one before
    heading: str | None = None
    chunk_heading: str | None = None

    def emit(overlap: bool) -> None:
        nonlocal pieces, fresh, chunk_heading
        if fresh:
            chunks.append(Chunk(_join(pieces), chunk_heading, sum(p[2] for p in pieces)))
        pieces = _tail(pieces, count, sizes.overlap_tokens) if overlap and fresh else []
        fresh = 0
        chunk_heading = heading

    for block in blocks:
        if block.level:
            starts = not fresh or sum(p[2] for p in pieces) >= sizes.min_tokens
            heading = block.text
            if starts:
                emit(overlap=False)
        for part in _fitting(block.text, count, sizes.max_tokens):
            if fresh and sum(p[2] for p in pieces) + part[2] > sizes.max_tokens:
                emit(overlap=True)
                # The carried overlap and this piece must fit together.
                while pieces and sum(p[2] for p in pieces) + part[2] > sizes.max_tokens:
                    pieces.pop(0)
            pieces.append(part)
            fresh += 1
    emit(overlap=False)
    return chunks
