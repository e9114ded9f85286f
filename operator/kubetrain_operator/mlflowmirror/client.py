"""MLflow's model-registry REST API (``/api/2.0/mlflow/...``) over httpx: the operator's only MLflow client.

``httpx2`` is the httpx fork (same API) that lightkube 1.x already depends on: no new dependency, and the
operator image still has no ML library.

The operator image carries no ML library: this module speaks the few endpoints the mirror needs and turns
every failure into an ``MlflowError`` whose ``reason`` is one of the trainer's tracking reasons
(``MlflowUnreachable``, ``MlflowRefused``, ``MlflowError``) and whose message says what to fix.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
from kubetrain_trainer import contract

API = "/api/2.0/mlflow/"
PAGE = 1000
MAX_PAGES = 20
DEFAULT_TIMEOUT = 10.0


class MlflowError(Exception):
    """MLflow could not be used: ``reason`` (CamelCase, for conditions) and a message saying what to fix."""

    def __init__(self, reason: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Credentials:
    """MLflow's own variables, read from a Secret (never from a spec)."""

    token: str | None = None
    username: str | None = None
    password: str | None = None
    source: str = ""
    """Where they came from (``Secret ns/name``), for messages."""

    @classmethod
    def from_data(cls, data: Mapping[str, str], source: str) -> Credentials | None:
        token = data.get("MLFLOW_TRACKING_TOKEN")
        user, password = data.get("MLFLOW_TRACKING_USERNAME"), data.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            return cls(token=token, source=source)
        if user and password is not None:
            return cls(username=user, password=password, source=source)
        return None

    def header(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username is not None:
            raw = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}


@dataclass
class MlflowVersion:
    """One model version as MLflow's registry returns it."""

    version: str
    source: str = ""
    run_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MlflowVersion:
        tags = {str(t.get("key")): str(t.get("value", "")) for t in data.get("tags") or []}
        return cls(str(data["version"]), str(data.get("source") or ""), str(data.get("run_id") or ""), tags)


@dataclass
class RegisteredModel:
    """A registered model: its aliases and its versions (each found by its tags)."""

    name: str
    exists: bool
    aliases: dict[str, str] = field(default_factory=dict)
    """alias → MLflow version."""
    versions: list[MlflowVersion] = field(default_factory=list)


class Registry:
    """The registry of one MLflow server, as one client (use ``async with``)."""

    def __init__(self, uri: str, credentials: Credentials | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.uri = uri.rstrip("/")
        self.credentials = credentials
        self._http = httpx.AsyncClient(
            base_url=self.uri + API,
            headers={"Content-Type": "application/json", **(credentials.header() if credentials else {})},
            timeout=timeout,
            follow_redirects=False,
        )

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    # ---- reads -------------------------------------------------------------------------------------------

    async def registered_model(self, name: str) -> RegisteredModel:
        """The registered model ``name`` with its aliases and every version (absent: ``exists=False``)."""
        try:
            data = await self._call("GET", "registered-models/get", params={"name": name})
        except MlflowError as exc:
            if exc.code == "RESOURCE_DOES_NOT_EXIST":
                return RegisteredModel(name, exists=False)
            raise
        model = data.get("registered_model") or {}
        aliases = {str(a["alias"]): str(a["version"]) for a in model.get("aliases") or []}
        out = RegisteredModel(name, exists=True, aliases=aliases)
        token: str | None = None
        for _ in range(MAX_PAGES):
            params = {"filter": f"name='{name}'", "max_results": str(PAGE)}
            if token:
                params["page_token"] = token
            page = await self._call("GET", "model-versions/search", params=params)
            out.versions.extend(MlflowVersion.from_json(v) for v in page.get("model_versions") or [])
            token = page.get("next_page_token")
            if not token:
                break
        return out

    # ---- writes ------------------------------------------------------------------------------------------

    async def create_registered_model(self, name: str, description: str) -> None:
        try:
            await self._call("POST", "registered-models/create", {"name": name, "description": description})
        except MlflowError as exc:
            if exc.code != "RESOURCE_ALREADY_EXISTS":
                raise

    async def create_version(
        self, name: str, source: str, run_id: str | None, tags: Mapping[str, str], description: str
    ) -> str:
        body: dict[str, Any] = {
            "name": name,
            "source": source,
            "tags": [{"key": k, "value": v} for k, v in sorted(tags.items())],
            "description": description,
        }
        if run_id:
            body["run_id"] = run_id
        data = await self._call("POST", "model-versions/create", body)
        return str((data.get("model_version") or {}).get("version"))

    async def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        await self._call(
            "POST", "model-versions/set-tag", {"name": name, "version": version, "key": key, "value": value}
        )

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        await self._call("POST", "registered-models/alias", {"name": name, "alias": alias, "version": version})

    async def delete_alias(self, name: str, alias: str) -> None:
        try:
            await self._call("DELETE", "registered-models/alias", {"name": name, "alias": alias}, query=True)
        except MlflowError as exc:
            if exc.code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise

    async def delete_version(self, name: str, version: str) -> None:
        try:
            await self._call("DELETE", "model-versions/delete", {"name": name, "version": version}, query=True)
        except MlflowError as exc:
            if exc.code != "RESOURCE_DOES_NOT_EXIST":
                raise

    # ---- transport ---------------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        endpoint: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
        query: bool = False,
    ) -> dict[str, Any]:
        """One request; MlflowError for anything but a JSON 200. DELETE sends its fields both as the query
        and as the JSON body (MLflow versions read one or the other)."""
        where = f"{method} {self.uri}{API}{endpoint}"
        try:
            resp = await self._http.request(
                method,
                endpoint,
                params=params if params is not None else (dict(body or {}) if query else None),
                json=dict(body) if body is not None else None,
            )
        except httpx.TimeoutException as exc:
            raise MlflowError(
                contract.TRACKING_REASON_UNREACHABLE, f"{where}: no answer ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise MlflowError(contract.TRACKING_REASON_UNREACHABLE, f"{where}: {_cause(exc)}") from exc
        if resp.status_code == 200:
            try:
                return dict(resp.json())
            except ValueError:
                raise MlflowError(
                    contract.TRACKING_REASON_ERROR, f"{where}: answered 200 without JSON: not an MLflow server?"
                ) from None
        raise self._error(resp, where)

    def _error(self, resp: httpx.Response, where: str) -> MlflowError:
        """The MlflowError of a non-200 answer: refused credentials, a server error, a wrong URI, the rest."""
        code, text = _error_of(resp)
        if resp.status_code in (401, 403):
            who = f" ({self.credentials.source})" if self.credentials and self.credentials.source else ""
            what = "no credentials were sent" if self.credentials is None else f"the credentials were refused{who}"
            message = f"{where}: HTTP {resp.status_code}, {what}: {text}".strip()
            return MlflowError(contract.TRACKING_REASON_REFUSED, message, code)
        if resp.status_code >= 500:
            return MlflowError(contract.TRACKING_REASON_UNREACHABLE, f"{where}: HTTP {resp.status_code}: {text}", code)
        if resp.status_code == 404 and code in (None, "ENDPOINT_NOT_FOUND"):
            message = f"{where}: HTTP 404: no MLflow REST API at {self.uri} (wrong tracking URI?)"
            return MlflowError(contract.TRACKING_REASON_ERROR, message)
        return MlflowError(contract.TRACKING_REASON_ERROR, f"{where}: HTTP {resp.status_code}: {text}", code)


def _error_of(resp: httpx.Response) -> tuple[str | None, str]:
    """MLflow's ``error_code`` and message of an error answer (None, the body's start otherwise)."""
    try:
        data = resp.json()
    except ValueError:
        return None, resp.text.strip()[:300]
    if isinstance(data, dict) and data.get("error_code"):
        return str(data["error_code"]), str(data.get("message") or "")[:500]
    return None, str(data)[:300]


def _cause(exc: BaseException) -> str:
    """The innermost cause of a transport error (connection refused, name resolution), not httpx's wrapper."""
    seen: BaseException = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(seen) or type(seen).__name__
    return text if seen is exc else f"{exc} ({text})"
