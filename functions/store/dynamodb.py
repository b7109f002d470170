"""The DynamoDB adapter: Amazon DynamoDB, DynamoDB Local or ScyllaDB Alternator (``endpoint_url``).

Table layout: ``pk`` (S, hash key), ``sk`` (S, range key), ``version`` (N), ``data`` (S, the JSON
text, so integers stay exact), ``expires_at`` (N, optional, the TTL attribute). Only PutItem with
a ConditionExpression, GetItem and Query are used, all strongly consistent.

Errors: ConditionalCheckFailedException is ConditionFailed; connection failures, timeouts,
throttling and 5xx that outlast the retries are StoreUnavailable. Retries are ours, not botocore's,
because a conditional put retried after an ambiguous failure (read timeout, dropped connection,
5xx: the first attempt may have been applied) can fail its condition against its own earlier
write. Reporting that as ConditionFailed would be a lie ("nothing was written") that money code
would act on, so it is reported as StoreUnavailable (outcome unknown) instead.
"""

from __future__ import annotations

import functools
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from functions.store.port import (
    MAX_KEY_BYTES,
    MAX_QUERY_LIMIT,
    Absent,
    Condition,
    ConditionFailed,
    Item,
    StoreUnavailable,
    VersionIs,
    check_item,
    decode_data,
    encode_data,
    prefix_end,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

TTL_ATTRIBUTE = "expires_at"
DEFAULT_REGION = "us-east-1"

# Rejected before being applied: safe to retry, even for a conditional put.
_THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "LimitExceededException",
    }
)
_NAMES = {"#pk": "pk", "#v": "version"}
_T = TypeVar("_T")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")


def table_definition(table: str) -> dict[str, Any]:
    """The CreateTable arguments of a Tollgate table (TTL is enabled apart, on TTL_ATTRIBUTE)."""
    return {
        "TableName": table,
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_table(table: str, endpoint_url: str | None = None, region: str | None = None) -> bool:
    """Create the table, wait until it is ACTIVE and enable TTL where the service supports it.

    Idempotent: returns False (after the same waiting and TTL steps) if the table already existed.
    """
    client = _client(endpoint_url, region, _config(connect_timeout=5.0, read_timeout=30.0))
    try:
        created = True
        try:
            client.create_table(**table_definition(table))
        except ClientError as exc:
            if _code(exc) != "ResourceInUseException":
                raise
            created = False
        client.get_waiter("table_exists").wait(
            TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
        )
        _enable_ttl(client, table)
        return created
    except (ClientError, BotoCoreError) as exc:
        raise StoreUnavailable(f"cannot create DynamoDB table {table!r}: {exc}") from exc
    finally:
        client.close()


def _enable_ttl(client: DynamoDBClient, table: str) -> None:
    try:
        desc = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if desc.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
            return
        client.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
    except ClientError as exc:
        # Services without TTL (some Alternator versions) answer with an unknown-operation or
        # validation error: items then simply stay until deleted, which the port allows.
        if _code(exc) not in ("UnknownOperationException", "ValidationException"):
            raise


class DynamoStore:
    """The store port over one DynamoDB-compatible table (see the module docstring)."""

    def __init__(
        self,
        table: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 4,
        max_pool_connections: int = 32,
    ) -> None:
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(f"invalid DynamoDB table name {table!r}: 3-255 of [A-Za-z0-9_.-]")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.table = table
        self.endpoint_url = endpoint_url
        self._max_attempts = max_attempts
        self._client = _client(
            endpoint_url,
            region,
            _config(connect_timeout, read_timeout, max_pool_connections),
        )

    # -- reads --------------------------------------------------------------------------------

    def get(self, pk: str, sk: str) -> Item | None:
        if not (_storable_key(pk) and _storable_key(sk)):
            return None  # such a key can never have been written
        resp = self._call(
            lambda: self._client.get_item(
                TableName=self.table,
                Key={"pk": {"S": pk}, "sk": {"S": sk}},
                ConsistentRead=True,
            ),
            idempotent=True,
        )
        raw = resp.get("Item")
        return _item(raw) if raw else None

    def query(
        self,
        pk: str,
        prefix: str = "",
        *,
        after: str | None = None,
        limit: int = 100,
        descending: bool = False,
    ) -> list[Item]:
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_QUERY_LIMIT}, got {limit}")
        if not _storable_key(pk) or len(prefix.encode()) > MAX_KEY_BYTES:
            return []
        bounds = _sk_bounds(prefix, after, descending)
        if bounds is None:
            return []
        request: dict[str, Any] = {
            "TableName": self.table,
            **_key_condition(pk, *bounds),
            "ScanIndexForward": not descending,
            "ConsistentRead": True,
        }
        out: list[Item] = []
        start: Mapping[str, Any] | None = None
        while len(out) < limit:
            # Two more than still wanted: the widened range's ends may be filtered out.
            page, start = self._query_page(request, limit - len(out) + 2, start)
            for item in page:
                if prefix and not item.sk.startswith(prefix):
                    if (item.sk > prefix) != descending:
                        return out  # sorted: every further sk lies past the prefix's range
                    continue
                if after is None or (item.sk < after if descending else item.sk > after):
                    out.append(item)
                    if len(out) == limit:
                        break
            if not start:
                break
        return out

    def _query_page(
        self, request: dict[str, Any], limit: int, start: Mapping[str, Any] | None
    ) -> tuple[list[Item], Mapping[str, Any] | None]:
        """One Query call: its items and the key to continue from (None: the range is done)."""
        kwargs = {**request, "Limit": limit}
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        resp = self._call(functools.partial(self._client.query, **kwargs), idempotent=True)
        return [_item(raw) for raw in resp.get("Items", [])], resp.get("LastEvaluatedKey")

    # -- the one write ------------------------------------------------------------------------

    def put(self, item: Item, condition: Condition | None = None) -> None:
        check_item(item)
        raw: dict[str, AttributeValueTypeDef] = {
            "pk": {"S": item.pk},
            "sk": {"S": item.sk},
            "version": {"N": str(item.version)},
            "data": {"S": encode_data(item.data)},
        }
        if item.expires_at is not None:
            raw[TTL_ATTRIBUTE] = {"N": str(int(item.expires_at))}
        kwargs: dict[str, Any] = {"TableName": self.table, "Item": raw}
        if isinstance(condition, Absent):
            kwargs["ConditionExpression"] = "attribute_not_exists(#pk)"
            kwargs["ExpressionAttributeNames"] = {"#pk": _NAMES["#pk"]}
        elif isinstance(condition, VersionIs):
            kwargs["ConditionExpression"] = "#v = :expected"
            kwargs["ExpressionAttributeNames"] = {"#v": _NAMES["#v"]}
            kwargs["ExpressionAttributeValues"] = {":expected": {"N": str(condition.version)}}
        elif condition is not None:
            raise TypeError(f"unknown condition {condition!r}")
        self._call(
            lambda: self._client.put_item(**kwargs),
            idempotent=condition is None,
            what=f"put {item.pk}/{item.sk}",
        )

    # -- health -------------------------------------------------------------------------------

    def ping(self) -> None:
        self._call(lambda: self._client.describe_table(TableName=self.table), idempotent=True)

    def close(self) -> None:
        self._client.close()

    # -- retries and error mapping ------------------------------------------------------------

    def _call(self, op: Callable[[], _T], *, idempotent: bool, what: str = "") -> _T:
        """Run op with bounded retries; map errors to the port's exceptions.

        ``idempotent`` is False for conditional puts: once an attempt failed ambiguously (it may
        have been applied), a later ConditionalCheckFailed may be our own write, so it becomes
        StoreUnavailable ("outcome unknown") rather than ConditionFailed.
        """
        ambiguous = False
        last: Exception | None = None
        for attempt in range(self._max_attempts):
            if attempt:
                time.sleep(random.uniform(0, min(1.0, 0.05 * 2**attempt)))
            try:
                return op()
            except ClientError as exc:
                code = _code(exc)
                if code == "ConditionalCheckFailedException":
                    if ambiguous and not idempotent:
                        raise StoreUnavailable(
                            f"{what}: outcome unknown (an earlier attempt may have been applied)"
                        ) from exc
                    raise ConditionFailed(what or "condition failed") from exc
                if code == "ValidationException":
                    raise ValueError(f"DynamoDB refused the request: {exc}") from exc
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in _THROTTLING:
                    last = exc
                elif status >= 500:
                    last, ambiguous = exc, True
                else:
                    raise StoreUnavailable(f"DynamoDB table {self.table!r}: {exc}") from exc
            except NoCredentialsError as exc:
                raise StoreUnavailable(f"no AWS credentials for DynamoDB: {exc}") from exc
            except BotoConnectionError as exc:
                last = exc  # never reached the server (refused, connect timeout, TLS, proxy)
            except BotoCoreError as exc:
                last, ambiguous = exc, True  # read timeout, dropped connection: maybe applied
        if ambiguous and not idempotent:
            raise StoreUnavailable(f"{what}: outcome unknown after retries: {last}") from last
        raise StoreUnavailable(
            f"DynamoDB {self.endpoint_url or 'AWS'} table {self.table!r} unavailable: {last}"
        ) from last


def _config(connect_timeout: float, read_timeout: float, max_pool_connections: int = 10) -> Config:
    return Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # DynamoStore._call retries, knowing which failures may have been applied.
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max_pool_connections,
    )


def _configured_credentials() -> bool:
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return True
    return _resolved_credentials()


@functools.cache
def _resolved_credentials() -> bool:
    # Once per process: the chain may ask the EC2 metadata service, slow where there is none.
    return boto3.session.Session().get_credentials() is not None


def _client(endpoint_url: str | None, region: str | None, config: Config) -> DynamoDBClient:
    session = boto3.session.Session()
    region = region or session.region_name
    kwargs: dict[str, Any] = {}
    if endpoint_url:
        region = region or DEFAULT_REGION
        if not _configured_credentials():
            # DynamoDB Local (and Alternator without auth) accept any credentials.
            kwargs = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    if not region:
        raise ValueError("no AWS region configured: set AWS_REGION or pass region=")
    client: DynamoDBClient = session.client(
        "dynamodb", endpoint_url=endpoint_url, region_name=region, config=config, **kwargs
    )
    return client


def _sk_bounds(
    prefix: str, after: str | None, descending: bool
) -> tuple[str | None, str | None] | None:
    """The inclusive sort-key range (lo, hi; None: open) to read; None if nothing can match.

    DynamoDB allows one sort-key condition, so the exact range (prefix AND after) is widened to
    an inclusive BETWEEN whose ends the caller filters out: at most two extra items are read.
    Python compares str by code point, which is UTF-8 byte order."""
    lo: str | None = prefix or None
    hi: str | None = prefix_end(prefix) if prefix else None
    if hi is not None and len(hi.encode()) > MAX_KEY_BYTES:
        hi = None  # not a valid key value; the scan stops at the first sk past the prefix
    if after is not None:
        # A cursor longer than any key is cut to a valid key value; filtering stays exact.
        cut = after
        if len(after.encode()) > MAX_KEY_BYTES:
            cut = after.encode()[: MAX_KEY_BYTES - 4].decode(errors="ignore")
        if descending:
            if not after:
                return None  # nothing sorts below the empty string
            bound = after if cut == after else prefix_end(cut)
            if bound is not None:
                hi = bound if hi is None else min(hi, bound)
        elif cut:  # (every key is above the empty string)
            lo = cut if lo is None else max(lo, cut)
    if lo is not None and hi is not None and lo > hi:
        return None
    return lo, hi


def _key_condition(pk: str, lo: str | None, hi: str | None) -> dict[str, Any]:
    """The Query arguments that select partition pk's sort keys in [lo, hi] (None: open)."""
    values: dict[str, AttributeValueTypeDef] = {":pk": {"S": pk}}
    condition = "pk = :pk"
    if lo is not None and hi is not None:
        condition += " AND sk BETWEEN :lo AND :hi"
    elif lo is not None:
        condition += " AND sk >= :lo"
    elif hi is not None:
        condition += " AND sk <= :hi"
    if lo is not None:
        values[":lo"] = {"S": lo}
    if hi is not None:
        values[":hi"] = {"S": hi}
    return {"KeyConditionExpression": condition, "ExpressionAttributeValues": values}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _storable_key(key: str) -> bool:
    return 0 < len(key.encode()) <= MAX_KEY_BYTES


def _item(raw: Mapping[str, Any]) -> Item:
    expires = raw.get(TTL_ATTRIBUTE)
    return Item(
        pk=raw["pk"]["S"],
        sk=raw["sk"]["S"],
        version=int(raw["version"]["N"]),
        data=decode_data(raw["data"]["S"]),
        expires_at=int(expires["N"]) if expires else None,
    )
