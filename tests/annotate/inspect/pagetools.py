"""Reading back the HTML page `show` writes, with the standard library's parser."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Span:
    classes: list[str]
    style: str
    title: str
    text: str = ""


@dataclass
class Page(HTMLParser):
    """Token spans (in order), per-segment texts, every tag name, and image sources."""

    spans: list[Span] = field(default_factory=list)
    segment_texts: list[str] = field(default_factory=list)
    meta_texts: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    img_src: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        HTMLParser.__init__(self, convert_charrefs=True)
        self._stack: list[str] = []
        self._in_span: Span | None = None
        self._in_meta = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        classes = (a.get("class") or "").split()
        if tag == "div" and "tokens" in classes:
            self.segment_texts.append("")
        if tag == "span" and "t" in classes:
            self._in_span = Span(classes, a.get("style") or "", a.get("title") or "")
        if tag == "div" and "meta" in classes:
            self._in_meta += 1
            self.meta_texts.append("")
        elif self._in_meta and tag == "div":
            self._in_meta += 1
        if tag == "img":
            self.img_src.append(a.get("src") or "")

    def handle_endtag(self, tag):
        if tag == "span" and self._in_span is not None:
            self.spans.append(self._in_span)
            self._in_span = None
        if tag == "div" and self._in_meta:
            self._in_meta -= 1

    def handle_data(self, data):
        self.text.append(data)
        if self._in_span is not None:
            self._in_span.text += data
            self.segment_texts[-1] += data
        if self._in_meta:
            self.meta_texts[-1] += data


def parse_page(html_text: str) -> Page:
    page = Page()
    page.feed(html_text)
    page.close()
    return page
