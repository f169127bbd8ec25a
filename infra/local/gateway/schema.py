"""The schema cache: the exposed functions' signatures and the API roles' settings.

Read from ``pg_catalog`` with PostgREST v13's own queries (src/PostgREST/SchemaCache.hs and
Config/Database.hs), once, and again when a call names a function the cache does not know
(PostgREST's ``NOTIFY pgrst, 'reload schema'``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from infra.local.gateway.config import HOISTED_TX_SETTINGS


class ReturnKind(enum.Enum):
    """How a function's result becomes the response body."""

    VOID = "void"  #: 204 No Content
    SCALAR = "scalar"  #: the value as JSON (``5``, ``"x"``, ``null``, a json document)
    SETOF_SCALAR = "setof_scalar"  #: a JSON array of values
    COMPOSITE = "composite"  #: one JSON object
    SETOF_COMPOSITE = "setof_composite"  #: a JSON array of objects


JSON_TYPES = ("json", "jsonb")


@dataclass(frozen=True)
class Param:
    name: str
    type_sql: str  #: schema-qualified where needed, e.g. ``public.job_status[]``
    required: bool
    variadic: bool


@dataclass(frozen=True)
class Routine:
    schema: str
    name: str
    params: tuple[Param, ...]
    returns: ReturnKind
    #: PostgREST v13 (src/PostgREST/Plan.hs, callReadPlan) runs STABLE and IMMUTABLE
    #: functions in a READ ONLY transaction on POST too; only VOLATILE ones may write.
    volatile: bool
    #: The function's ``SET default_transaction_isolation`` (PostgREST begins with it).
    isolation: str | None = None
    #: Its ``SET`` of db-hoisted-tx-settings, applied to the whole transaction as PostgREST
    #: does (a function-level statement_timeout could not otherwise bound its own call).
    settings: tuple[tuple[str, str], ...] = ()
    #: It returns json, or a domain (maybe over json): text that may carry whitespace around
    #: the value, which PostgREST's answer leaves out (``rpc.call_sql``).
    returns_json_text: bool = False

    def matches(self, keys: frozenset[str]) -> bool:
        """PostgREST's rule: every required argument given, every given key an argument."""
        names = {p.name for p in self.params}
        required = {p.name for p in self.params if p.required}
        return required <= keys <= names

    @property
    def single_unnamed_json(self) -> bool:
        return len(self.params) == 1 and not self.params[0].name and self.takes_one_json

    @property
    def takes_one_json(self) -> bool:
        return len(self.params) == 1 and self.params[0].type_sql in JSON_TYPES

    def signature(self) -> str:
        args = ", ".join(f"{p.name} => {p.type_sql}" for p in self.params)
        return f"{self.schema}.{self.name}({args})"


# PostgREST v13.0.8, src/PostgREST/SchemaCache.hs (funcsSqlQuery): a function's result is
# composite when its type is a composite type, "or if any TABLE, INOUT or OUT arguments
# present" (``proargmodes && '{t,b,o}'``), so a single OUT parameter or a one-column
# ``returns table`` answers an object / array of objects, not a bare value.
_ROUTINES_SQL = """
select n.nspname, p.proname, p.proretset, p.provolatile::text,
       p.prorettype = 'pg_catalog.void'::regtype as returns_void,
       t.typtype = 'c' or coalesce(p.proargmodes::text[] && '{t,b,o}', false) as composite,
       p.pronargdefaults,
       coalesce(p.proargnames, '{}'::text[]),
       coalesce(p.proargmodes::text[], '{}'::text[]),
       array(select format_type(a.oid, null)
             from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))
                  with ordinality as a(oid, i)
             order by a.i),
       (select lower(split_part(split_part(c, '=', 2), ',', 1))
        from unnest(p.proconfig) c where c like 'default_transaction_isolation%%' limit 1),
       array(select c from unnest(p.proconfig) c where split_part(c, '=', 1) = any(%s)),
       p.prorettype = 'pg_catalog.json'::regtype or t.typtype = 'd' as returns_json_text
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type t on t.oid = p.prorettype
where n.nspname = any(%s) and p.prokind = 'f'
"""

# PostgREST v13.0.8, src/PostgREST/Config/Database.hs (queryRoleSettings): the all-database
# settings (``rolconfig``) of the roles the connecting role (authenticator) is a member of,
# only those a user may set, values lower-cased. Applied per transaction before the role switch.
_ROLE_SETTINGS_SQL = """
with role_setting as (
  select r.rolname, unnest(r.rolconfig) as setting
  from pg_auth_members m
  join pg_roles r on r.oid = m.roleid
  where m.member = current_user::regrole::oid
),
kv_settings as (
  select rolname,
         substr(setting, 1, strpos(setting, '=') - 1) as key,
         lower(substr(setting, strpos(setting, '=') + 1)) as value
  from role_setting
)
select kv.rolname, array_agg(kv.key || '=' || kv.value)
from kv_settings kv
join pg_settings ps on ps.name = kv.key
  and (ps.context = 'user' or has_parameter_privilege(current_user::regrole::oid, ps.name, 'set'))
group by kv.rolname
"""

_IN_MODES = ("i", "b", "v")


def _routine_from_row(row: Sequence[Any]) -> Routine:
    (
        schema,
        name,
        retset,
        volatility,
        returns_void,
        composite,
        n_defaults,
        arg_names,
        arg_modes,
        arg_types,
        isolation,
        hoisted,
        returns_json_text,
    ) = row
    modes = list(arg_modes) or ["i"] * len(arg_types)
    names = list(arg_names) + [""] * (len(arg_types) - len(arg_names))
    inputs = [
        (names[i] or "", arg_types[i], modes[i])
        for i in range(len(arg_types))
        if modes[i] in _IN_MODES
    ]
    first_optional = len(inputs) - n_defaults
    params = tuple(
        Param(arg_name, arg_type, required=i < first_optional, variadic=mode == "v")
        for i, (arg_name, arg_type, mode) in enumerate(inputs)
    )
    if returns_void:
        kind = ReturnKind.VOID
    elif composite:
        kind = ReturnKind.SETOF_COMPOSITE if retset else ReturnKind.COMPOSITE
    else:
        kind = ReturnKind.SETOF_SCALAR if retset else ReturnKind.SCALAR
    settings = tuple((k, v) for k, _, v in (str(item).partition("=") for item in hoisted))
    return Routine(
        schema,
        name,
        params,
        kind,
        volatile=volatility == "v",
        isolation=isolation,
        settings=settings,
        returns_json_text=returns_json_text,
    )


@dataclass(frozen=True)
class SchemaCache:
    routines: Mapping[tuple[str, str], tuple[Routine, ...]]
    role_settings: Mapping[str, tuple[tuple[str, str], ...]]
    #: The roles' ``default_transaction_isolation`` (PostgREST's configRoleIsoLvl).
    role_isolation: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], schemas: Sequence[str]) -> SchemaCache:
        with conn.transaction():
            # With only pg_catalog on the path, format_type qualifies every other type.
            conn.execute("set local search_path to pg_catalog")
            rows = conn.execute(
                _ROUTINES_SQL, (list(HOISTED_TX_SETTINGS), list(schemas))
            ).fetchall()
            setting_rows = conn.execute(_ROLE_SETTINGS_SQL).fetchall()
        routines: dict[tuple[str, str], list[Routine]] = {}
        for row in rows:
            routine = _routine_from_row(row)
            routines.setdefault((routine.schema, routine.name), []).append(routine)
        settings: dict[str, dict[str, str]] = {}
        isolation: dict[str, str] = {}
        for role, config in setting_rows:
            for item in config or ():
                key, _, value = item.partition("=")
                if key == "default_transaction_isolation":
                    isolation[role] = value
                else:
                    settings.setdefault(role, {})[key] = value
        return cls(
            {key: tuple(value) for key, value in routines.items()},
            {role: tuple(values.items()) for role, values in settings.items()},
            isolation,
        )
