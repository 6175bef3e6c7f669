"""Agent configuration: TOML parsed with tomllib, validated by pydantic, errors naming key and line."""

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from adapters.base import AdapterConfig, AdapterError
from adapters.credentials import SecretError
from adapters.registry import adapter_class
from agent.collectorlink import CollectorFileError, ca_bundle, read_token, shown_url

MIN_INTERVAL = 60
MAX_INTERVAL = 3600


class ConfigError(Exception):
    """A configuration that cannot run; the CLI prints it and exits 2."""


class AgentSettings(BaseModel):
    """The `[agent]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    collector: str | None = Field(
        default=None,
        description="Collector base URL, e.g. https://collector.example.net; leave out on a site "
        "without a network path and move heartbeats with `tr7-agent export`")
    state_dir: Path = Field(
        default=Path("/var/lib/tr7-agent"),
        description="Absolute path of the directory of the private key (agent.key) and the spool (spool.db)")
    # Declared before `interval` so its validator can see it.
    allow_short_interval: bool = Field(
        default=False, description="Allow intervals below 60 s (tests and demos only)")
    interval: int = Field(
        default=300, ge=1, le=MAX_INTERVAL,
        description="Poll interval in seconds, 60 .. 3600; polls fire at multiples of it since the epoch")
    name: str | None = Field(
        default=None, min_length=1, description="Agent name shown by the collector (default: host name)")
    metrics_listen: str | None = Field(
        default=None, description="host:port of the Prometheus metrics endpoint (off when left out)")
    ca_file: str | None = Field(
        default=None, description="PEM bundle to verify the collector's TLS certificate (default: system)")
    token_file: str | None = Field(
        default=None, description="File holding a bearer token for the collector, if it requires one "
        "(relative names are looked up in $CREDENTIALS_DIRECTORY)")
    spool_limit_mb: int = Field(
        default=512, ge=1, description="Spool size (MiB) above which an alarm is raised; unshipped "
        "heartbeats are never deleted")

    @field_validator("collector")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        if v is not None and re.search(r"\s", v):  # "http://collector example.net" failed only at enroll
            raise ValueError("must be a URL without spaces")
        if v is not None and re.search(r"/v1/?$", v):
            raise ValueError("is the collector's base URL, without /v1 (the agent adds /v1/heartbeats)")
        if v is not None:
            try:  # as the shipper will use it: a port that is no number passed, then killed `run`
                url = httpx.URL(v)
            except (httpx.InvalidURL, ValueError) as exc:
                raise ValueError(f"is not a usable URL: {exc}") from None
            # httpx takes any number: port 99999 reached 34463 (mod 65536), with the tokens
            if url.port is not None and not 0 < url.port < 65536:
                raise ValueError("the port must be from 1 to 65535")
            if not url.host:
                raise ValueError("must name a host, e.g. https://collector.example.net")
            if url.query or url.fragment or "?" in v or "#" in v:  # /v1/... is appended to it
                raise ValueError("is the collector's base URL, without ?query or #fragment")
        return v.rstrip("/") if v else v

    @field_validator("state_dir", mode="before")
    @classmethod
    def _absolute(cls, v: Any) -> Any:
        # "" (a template left empty) or a relative path meant the directory each command was
        # started in: the key and the spool in one place, `status` looking in another
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty: give the absolute path of the state directory, e.g. "
                             "/var/lib/tr7-agent")
        if isinstance(v, str | Path) and not Path(v).is_absolute():
            raise ValueError(f"{str(v)!r} is relative (to the directory a command is started in): give an "
                             "absolute path, e.g. /var/lib/tr7-agent")
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$", v):
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
        if v is not None and not 0 < int(v.rsplit(":", 1)[1]) < 65536:
            raise ValueError("the port must be from 1 to 65535")
        return v

    @field_validator("interval")
    @classmethod
    def _short(cls, v: int, info: ValidationInfo) -> int:
        if v < MIN_INTERVAL and not info.data.get("allow_short_interval", False):
            raise ValueError(f"interval {v} is below {MIN_INTERVAL} s; "
                             "set allow_short_interval = true for tests and demos")
        return v

    @property
    def agent_name(self) -> str:
        return self.name or socket.gethostname()

    @property
    def collector_shown(self) -> str | None:
        """The collector URL as logs and output show it: what it holds before @ (a basic-auth proxy's
        user:pass, or a token as the user name) replaced by ***. httpx still sends it; token_file
        is the safer way."""
        if not self.collector:
            return self.collector
        return shown_url(self.collector)

    @property
    def key_path(self) -> Path:
        return self.state_dir / "agent.key"

    @property
    def spool_path(self) -> Path:
        return self.state_dir / "spool.db"


@dataclass
class Config:
    path: Path
    agent: AgentSettings
    adapters: list[AdapterConfig] = field(default_factory=list)
    # Values an earlier release accepted and this one reads its own way, each said where it is:
    # refused, they stopped an upgraded agent at its next restart, and its hours went unsigned.
    warnings: list[str] = field(default_factory=list)


def _table_lines(text: str) -> list[tuple[str, int, int]]:
    """(table name, index among same-name array tables, line number) of every header line."""
    out: list[tuple[str, int, int]] = []
    counts: dict[str, int] = {}
    for no, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?", line)
        if m:
            name = m.group(2)
            idx = counts.get(name, 0)
            counts[name] = idx + 1
            out.append((name, idx, no))
    return out


def find_line(text: str, table: str, index: int, key: str | None) -> int | None:
    """Line of ``key`` inside the ``index``-th ``[table]``/``[[table]]``, else of the header.

    tomllib reports no positions for valid documents, so the line is found in the text itself;
    simple `key = value` lines cover what a configuration file holds.
    """
    lines = text.splitlines()
    heads = _table_lines(text)
    for i, (name, idx, no) in enumerate(heads):
        if name == table and idx == index:
            end = heads[i + 1][2] - 1 if i + 1 < len(heads) else len(lines)
            if key is not None:
                pat = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
                for n in range(no, end):
                    if pat.match(lines[n]):
                        return n + 1
            return no
    return None


def _fail(path: Path, text: str, table: str, index: int, loc: tuple[Any, ...], msg: str) -> ConfigError:
    return ConfigError(_where(path, text, table, index, loc, msg))


def _where(path: Path, text: str, table: str, index: int, loc: tuple[Any, ...], msg: str) -> str:
    key = str(loc[0]) if loc else None
    line = find_line(text, table, index, key)
    where = f"{path}:{line}" if line else str(path)
    name = f"[[{table}]] #{index + 1}" if table == "adapters" else f"[{table}]"
    dotted = ".".join(str(p) for p in loc) if loc else "(table)"
    return f"{where}: {name} {dotted}: {msg}"


def _errors(exc: ValidationError, path: Path, text: str, table: str, index: int) -> ConfigError:
    first = exc.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    return _fail(path, text, table, index, tuple(first["loc"]), msg)


def load_config(path: Path) -> Config:
    """Read and validate; every error names the file, the line and the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (TOML files are UTF-8)") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"agent", "adapters"}
    if unknown:
        key = sorted(unknown)[0]
        at = next((n for n, ln in enumerate(text.splitlines(), 1)
                   if re.match(rf"^\s*\[*\s*{re.escape(key)}\b", ln)), None)
        raise ConfigError(f"{path}:{at or '?'}: unknown table or key {key!r} "
                          "(only [agent] and [[adapters]])")
    agent_doc = doc.get("agent", {})
    if not isinstance(agent_doc, dict):
        raise ConfigError(f"{path}: agent must be a table [agent]")
    try:
        agent = AgentSettings.model_validate(agent_doc)
    except ValidationError as exc:
        raise _errors(exc, path, text, "agent", 0) from exc
    warnings: list[str] = []
    _collector_files(agent, path, text, warnings)
    tables = doc.get("adapters", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: adapters must be array tables [[adapters]]")
    adapters: list[AdapterConfig] = []
    seen: set[str] = set()
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: adapters must be array tables [[adapters]], not a plain array")
        platform = table.get("platform")
        if not isinstance(platform, str):
            raise _fail(path, text, "adapters", i, ("platform",), "missing or not a string")
        try:
            cls = adapter_class(platform)
        except AdapterError as exc:
            raise _fail(path, text, "adapters", i, ("platform",), exc.reason) from exc
        try:
            cfg = cls.Config.model_validate(table)
        except ValidationError as exc:
            raise _errors(exc, path, text, "adapters", i) from exc
        if cfg.name in seen:
            raise _fail(path, text, "adapters", i, ("name",), f"adapter name {cfg.name!r} used twice")
        seen.add(cfg.name)
        adapters.append(_timeout_within(cfg, agent.interval, path, text, i, warnings))
    return Config(path=path, agent=agent, adapters=adapters, warnings=warnings)


def _collector_files(agent: AgentSettings, path: Path, text: str, warnings: list[str]) -> None:
    """The token and CA files' content, checked as the shipper will use them (`config validate` and
    a reload too): each passed validation, then gave a traceback, an OpenSSL error naming no file,
    or the token quoted in an httpx error. A token file this user cannot read (root's credentials,
    an operator's shell) is no error here: the commands that send it say why."""
    # A file this user may not read (the service's, from an operator's shell) is left to the
    # commands that use it, as the token's is: `status` and `export` need neither.
    if agent.ca_file and not (os.path.exists(agent.ca_file) and not os.access(agent.ca_file, os.R_OK)):
        try:
            ca_bundle(agent.ca_file)
        except CollectorFileError as exc:
            raise _fail(path, text, "agent", 0, ("ca_file",), exc.detail) from None
    if agent.token_file:
        try:
            if not read_token(agent.token_file):
                warnings.append(_where(path, text, "agent", 0, ("token_file",), f"{agent.token_file}: the "
                                       "token is empty: heartbeats are sent with no Authorization header"))
        except CollectorFileError as exc:
            raise _fail(path, text, "agent", 0, ("token_file",), exc.detail) from None
        except SecretError:
            pass


def require_adapters(config: Config) -> Config:
    """What `config validate`, `run` and a reload share: a configuration that polls nothing (the
    commented sample) is refused; `run` signed empty heartbeats with it for ever."""
    if not config.adapters:
        raise ConfigError(f"{config.path}: no [[adapters]] table: nothing to poll")
    return config


def _timeout_within(cfg: AdapterConfig, interval: int, path: Path, text: str, i: int,
                    warnings: list[str]) -> AdapterConfig:
    """A poll waits for every adapter and the next one starts only after it: an adapter allowed
    longer than the interval delayed every other adapter's heartbeats too (a healthy instance got
    one heartbeat in four, gaps in its hours). A timeout given is used when below the interval;
    one at or over it (earlier releases took it) is lowered as the default is, to 80% of the
    interval, and said; the default (60 s) is at most 80% of a shorter interval."""
    lowered = min(cfg.timeout, 0.8 * interval)
    if "timeout" in cfg.model_fields_set:
        if cfg.timeout < interval:
            return cfg
        warnings.append(_where(path, text, "adapters", i, ("timeout",),
                               f"{cfg.timeout:g} s is not below [agent] interval {interval} s: {lowered:g} s "
                               "is used (every adapter is waited for before the next poll, so a slow one "
                               "would delay the others' heartbeats)"))
    return cfg.model_copy(update={"timeout": lowered})
