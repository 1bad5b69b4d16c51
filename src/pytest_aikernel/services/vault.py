"""HashiCorp Vault 1.15 in dev mode, seeded with the stack's own credentials.

Once the services it describes are ready, ``secret/aikernel/<service>`` (KV v2) holds the address
and credentials of every other service of the stack, so services under test fetch them the way they
do in production. The user's YAML seed file adds KV secrets, policies, AppRoles and transit keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import _http
from ..errors import ConfigError, SeedError
from ..faults import Faultable
from ..runtime import ContainerSpec, Running
from ..settings import OPTIONS_BY_FIELD, Settings
from .base import (
    ExternalTarget,
    Isolation,
    MaskedRepr,
    MetricsEndpoint,
    Service,
    StackContext,
    TestScope,
    external_url,
)

if TYPE_CHECKING:
    import hvac

PORT = 8200
KV_MOUNT = "secret"
ENTRY_PREFIX = "aikernel"
SEED_KEYS = ("kv", "policies", "approles", "transit_keys")


@dataclass(frozen=True)
class VaultSeed:
    """The parsed user seed file."""

    path: Path
    kv: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    policies: Mapping[str, str] = field(default_factory=dict)
    approles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    transit_keys: tuple[str, ...] = ()


def load_seed(path: Path) -> VaultSeed:
    """Parse and check a seed file; ConfigError names the file and the offending key."""
    import yaml

    opt = OPTIONS_BY_FIELD["vault_seed"]
    where = f"Vault seed file {path} ({opt.cli} / ini {opt.ini} / env {opt.env})"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it: {exc}") from None
    if data is None:
        return VaultSeed(path=path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping with keys {', '.join(SEED_KEYS)}, "
            f"got {type(data).__name__}"
        )
    unknown = [str(k) for k in data if k not in SEED_KEYS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key {', '.join(repr(k) for k in unknown)}; allowed: "
            f"{', '.join(SEED_KEYS)}"
        )

    def mapping(key: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key!r} must be a mapping, got {type(value).__name__}")
        return {str(k): v for k, v in value.items()}

    kv = mapping("kv", data.get("kv"))
    for name, secret in kv.items():
        if not isinstance(secret, dict) or not secret:
            raise ConfigError(
                f"{where}: kv entry {name!r} must be a non-empty mapping of keys to values"
            )
        if name.startswith("/") or name.endswith("/"):
            raise ConfigError(f"{where}: kv path {name!r} must not start or end with '/'")
    policies = mapping("policies", data.get("policies"))
    for name, text in policies.items():
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: policy {name!r} must be a non-empty HCL string")
    approles = mapping("approles", data.get("approles"))
    for name, params in approles.items():
        if params is None:
            approles[name] = {}
        elif not isinstance(params, dict):
            raise ConfigError(f"{where}: approle {name!r} must be a mapping of role parameters")
        policies_of_role = (params or {}).get("token_policies", []) or []
        if not isinstance(policies_of_role, list):
            raise ConfigError(
                f"{where}: approle {name!r}: token_policies must be a list of policy names"
            )
        for policy in policies_of_role:
            if policy not in policies and policy not in ("default",):
                raise ConfigError(
                    f"{where}: approle {name!r} names policy {policy!r}, which 'policies' does "
                    "not define"
                )
    transit = data.get("transit_keys") or []
    if not isinstance(transit, list) or not all(isinstance(k, str) and k for k in transit):
        raise ConfigError(f"{where}: 'transit_keys' must be a list of key names")
    return VaultSeed(
        path=path,
        kv=kv,
        policies={k: str(v) for k, v in policies.items()},
        approles={k: dict(v or {}) for k, v in approles.items()},
        transit_keys=tuple(transit),
    )


@dataclass(frozen=True, repr=False)
class VaultService(MaskedRepr, Faultable):
    """Vault (dev mode) of the stack: ``url``, root ``token`` and client helpers."""

    host: str
    port: int
    token: str
    internal_host: str
    internal_port: int = PORT
    #: AppRoles created from the seed file
    approles: tuple[str, ...] = ()
    kv_mount: str = KV_MOUNT

    _secret_fields: ClassVar[tuple[str, ...]] = ("token",)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def internal_url(self) -> str:
        return f"http://{self.internal_host}:{self.internal_port}"

    def client(self, **kwargs: Any) -> hvac.Client:
        """An ``hvac.Client`` authenticated with the root token; keyword arguments go to it.

        It talks to Vault directly, whatever the environment's ``*_proxy`` variables say (pass
        your own ``session=`` to change that).
        """
        return _hvac_client(self.url, self.token, **kwargs)

    def approle_credentials(self, role: str) -> dict[str, str]:
        """``{"role_id", "secret_id"}`` for an AppRole from the seed file (a new secret_id)."""
        if role not in self.approles:
            known = ", ".join(self.approles) or "none (add 'approles' to the seed file)"
            raise KeyError(f"no AppRole {role!r} was seeded; seeded roles: {known}")
        client = self.client()
        role_id = client.auth.approle.read_role_id(role_name=role)["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id(role_name=role)["data"]["secret_id"]
        return {"role_id": str(role_id), "secret_id": str(secret_id)}


def _hvac_client(url: str, token: str, **kwargs: Any) -> hvac.Client:
    """An ``hvac.Client`` on a stack address: its requests session ignores env proxies.

    hvac makes a plain ``requests.Session``, which sends every request through ``http_proxy``
    / ``ALL_PROXY`` unless ``NO_PROXY`` lists the host.
    """
    import hvac

    params: dict[str, Any] = {"timeout": 10, **kwargs}
    if params.get("session") is None:
        params["session"] = _http.direct_session()
    return hvac.Client(url=url, token=token, **params)


@dataclass(frozen=True)
class VaultPath:
    """A KV v2 prefix under ``secret/`` that belongs to one test: ``tests/<scope_name>``.

    ``url``, ``internal_url``, ``token`` and ``mount`` are what the code under test needs to
    read it: Vault's address from the test process and from containers on the stack network,
    the root token, and the KV v2 mount (``secret``).
    """

    prefix: str
    vault: VaultService
    #: the test's name, shared by all its per-test fixtures
    scope_name: str = ""

    @property
    def url(self) -> str:
        return self.vault.url

    @property
    def internal_url(self) -> str:
        return self.vault.internal_url

    @property
    def token(self) -> str:
        return self.vault.token

    @property
    def mount(self) -> str:
        return self.vault.kv_mount

    def path(self, name: str) -> str:
        """``<prefix>/<name>``: the KV path of ``name`` (without the ``secret/`` mount)."""
        return f"{self.prefix}/{name}"

    def write(self, name: str, **data: Any) -> None:
        self.vault.client().secrets.kv.v2.create_or_update_secret(
            path=self.path(name), secret=data, mount_point=self.vault.kv_mount
        )

    def read(self, name: str) -> dict[str, Any]:
        response = self.vault.client().secrets.kv.v2.read_secret_version(
            path=self.path(name), mount_point=self.vault.kv_mount, raise_on_deleted_version=True
        )
        return dict(response["data"]["data"])


def _delete_tree(client: hvac.Client, mount: str, prefix: str) -> None:
    import hvac.exceptions

    try:
        keys = client.secrets.kv.v2.list_secrets(path=prefix, mount_point=mount)["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return
    for key in keys:
        if key.endswith("/"):
            _delete_tree(client, mount, f"{prefix}/{key.rstrip('/')}")
        else:
            client.secrets.kv.v2.delete_metadata_and_all_versions(
                path=f"{prefix}/{key}", mount_point=mount
            )


@contextmanager
def _test_path(vault: VaultService, scope: TestScope) -> Iterator[VaultPath]:
    prefix = f"tests/{scope.name}"
    try:
        yield VaultPath(prefix, vault, scope.name)
    finally:
        _delete_tree(vault.client(), vault.kv_mount, prefix)


class Vault(Service):
    name = "vault"
    shaped_by = ("vault_seed",)
    default_image = "hashicorp/vault:1.15"
    ports = (PORT,)
    isolations = (
        Isolation(
            "aikernel_vault_path",
            """A KV v2 prefix under ``secret/`` unique to this test, deleted after it.

    Returns a :class:`pytest_aikernel.VaultPath`: ``prefix`` (``tests/<scope_name>``),
    ``path(name)``, ``write(name, **data)``, ``read(name)``, and ``url``, ``internal_url``,
    ``token``, ``mount`` and ``scope_name`` for the code under test.
    """,
            _test_path,
        ),
    )
    ready_log = "post-unseal setup complete"
    fixture_doc = """Vault 1.15 in dev mode with a generated root token (session scope).

    Returns a :class:`pytest_aikernel.VaultService`: ``url``, ``token``, ``client()`` (hvac)
    and ``approle_credentials(role)``. KV v2 ``secret/aikernel/<service>`` holds host, port,
    internal_host, internal_port and credentials of every other service of the stack; the
    --aikernel-vault-seed file adds kv, policies, approles and transit_keys.
    """

    external_env = "AIKERNEL_VAULT_ADDR"
    external_default = "http://127.0.0.1:8200"

    def external(self, env: Mapping[str, str]) -> ExternalTarget:
        url = external_url(env, self.external_env, self.external_default)
        token = env.get("AIKERNEL_VAULT_TOKEN", "").strip() or "aikernel-dev-token"
        return ExternalTarget(
            host=str(url.hostname), ports={PORT: url.port or PORT}, secrets={"vault.token": token}
        )

    def external_exports(self, obj: Any) -> dict[str, str]:
        return {self.external_env: obj.url, "AIKERNEL_VAULT_TOKEN": obj.token}

    def validate(self, settings: Settings) -> None:
        if settings.vault_seed is not None:
            load_seed(settings.vault_seed)

    def container(self, ctx: StackContext) -> ContainerSpec:
        return ContainerSpec(
            image=ctx.image(self.name),
            env={
                "VAULT_DEV_ROOT_TOKEN_ID": ctx.secrets.get("vault.token"),
                "VAULT_DEV_LISTEN_ADDRESS": f"0.0.0.0:{PORT}",
                # dev mode keeps everything in memory: no mlock capability needed
                "SKIP_SETCAP": "true",
            },
            ports=(PORT,),
        )

    def _client(self, ctx: StackContext, running: Running, timeout: float = 10) -> hvac.Client:
        return _hvac_client(
            f"http://{running.host}:{running.host_port(PORT)}",
            ctx.secrets.get("vault.token"),
            timeout=timeout,
        )

    def probe(self, ctx: StackContext, running: Running) -> None:
        health = self._client(ctx, running, timeout=2).sys.read_health_status(method="GET")
        if not isinstance(health, dict):  # hvac gives the response for non-200 answers
            status = getattr(health, "status_code", "?")
            raise RuntimeError(f"/v1/sys/health answered HTTP {status}")
        if not health.get("initialized") or health.get("sealed"):
            raise RuntimeError(f"/v1/sys/health: {health}")

    def metrics(self, ctx: StackContext) -> MetricsEndpoint:
        return MetricsEndpoint(
            PORT,
            "/v1/sys/metrics",
            params={"format": ("prometheus",)},
            bearer_token=ctx.secrets.get("vault.token"),
        )

    def seed_after(self, ctx: StackContext) -> frozenset[str]:
        return ctx.services - {self.name}

    def seed(self, ctx: StackContext, running: Running) -> None:
        client = self._client(ctx, running)
        for name in sorted(ctx.services - {self.name}):
            self._write_entry(ctx, client, name)
        if ctx.settings.vault_seed is not None:
            self._apply_seed(client, load_seed(ctx.settings.vault_seed))

    def after_restart(self, ctx: StackContext, running: Running) -> None:
        """Vault in dev mode keeps nothing: write every service's entry and the seed again."""
        self.seed(ctx, running)

    def on_stack_grew(self, ctx: StackContext, running: Running, added: frozenset[str]) -> None:
        client = self._client(ctx, running)
        for name in sorted(added):
            self._write_entry(ctx, client, name)

    def _write_entry(self, ctx: StackContext, client: hvac.Client, name: str) -> None:
        entry = ctx.describe(name)
        if entry is None:
            return
        try:
            client.secrets.kv.v2.create_or_update_secret(
                path=f"{ENTRY_PREFIX}/{name}", secret=dict(entry), mount_point=KV_MOUNT
            )
        except Exception as exc:
            raise SeedError(
                self.name, f"vault: writing secret/{ENTRY_PREFIX}/{name} failed: {exc}"
            ) from None

    def _apply_seed(self, client: hvac.Client, seed: VaultSeed) -> None:
        def step(what: str, key: str, fn: Any, **kwargs: Any) -> None:
            try:
                fn(**kwargs)
            except Exception as exc:
                raise SeedError(
                    self.name,
                    f"vault: seed file {seed.path}: {what} {key!r} failed: "
                    f"{type(exc).__name__}: {str(exc).strip()}",
                ) from None

        for path, secret in seed.kv.items():
            step(
                "kv",
                path,
                client.secrets.kv.v2.create_or_update_secret,
                path=path,
                secret=dict(secret),
                mount_point=KV_MOUNT,
            )
        for name, policy in seed.policies.items():
            step("policies", name, client.sys.create_or_update_policy, name=name, policy=policy)
        if seed.approles and "approle/" not in client.sys.list_auth_methods():
            step("approles", "approle/", client.sys.enable_auth_method, method_type="approle")
        if seed.approles:
            for name, params in seed.approles.items():
                step(
                    "approles",
                    name,
                    client.auth.approle.create_or_update_approle,
                    role_name=name,
                    **params,
                )
        if seed.transit_keys and "transit/" not in client.sys.list_mounted_secrets_engines():
            step(
                "transit_keys", "transit/", client.sys.enable_secrets_engine, backend_type="transit"
            )
        if seed.transit_keys:
            for key in seed.transit_keys:
                step("transit_keys", key, client.secrets.transit.create_key, name=key)

    def expose(self, ctx: StackContext, running: Running) -> VaultService:
        seed = ctx.settings.vault_seed
        roles = tuple(load_seed(seed).approles) if seed is not None else ()
        return VaultService(
            host=running.host,
            port=running.host_port(PORT),
            token=ctx.secrets.get("vault.token"),
            internal_host=running.internal_host,
            approles=roles,
        )


SERVICES = (Vault,)
