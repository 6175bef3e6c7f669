"""Node XML for libvirt's test:/// driver: each connection starts from this file's domains."""

import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
TR7_NS = "urn:tr7:metering:1"


@dataclass
class Dom:
    name: str
    state: int = 1  # VIR_DOMAIN_* run state, set through <test:runstate>
    license: dict[str, str] | None = None  # attributes of <tr7:license>, None: no metadata
    raw_metadata: str | None = None  # verbatim child of <metadata> instead of a <tr7:license>
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))


def domain_xml(d: Dom) -> str:
    meta = d.raw_metadata or ""
    if d.license is not None:
        attrs = " ".join(f"{k}={quoteattr(v)}" for k, v in d.license.items())
        meta = f'<tr7:license xmlns:tr7="{TR7_NS}" {attrs}/>'
    return (f'<domain type="test" xmlns:test="{TEST_NS}"><name>{d.name}</name><uuid>{d.uuid}</uuid>'
            f"<memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
            f"{f'<metadata>{meta}</metadata>' if meta else ''}"
            f"<test:runstate>{d.state}</test:runstate></domain>")


def write_node(path: Path, doms: list[Dom]) -> str:
    """Write the node file and return its test:/// URI."""
    path.write_text("<node>\n" + "\n".join(domain_xml(d) for d in doms) + "\n</node>\n")
    return f"test://{path.resolve()}"
