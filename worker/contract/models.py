"""Wire contract v1: the block job the runtime publishes and the result the worker answers.

These pydantic models are the single source of the contract: `contracts/*.schema.json` and
`contracts/examples/` are generated from them (`python -m worker.contract.gen`), and a test fails
when the committed files drift from the models.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, model_validator

CONTRACT_VERSION = 1

# Salesforce API names: a letter, then letters, digits and single underscores, with up to two
# `__` separators (namespace prefix and custom suffix: `ns__Field__c`).
_API_NAME_SEGMENT = r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*"
API_NAME_PATTERN = rf"^{_API_NAME_SEGMENT}(?:__{_API_NAME_SEGMENT}){{0,2}}$"
SALESFORCE_ID_PATTERN = r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$"

ApiName = Annotated[
    str,
    StringConstraints(pattern=API_NAME_PATTERN, max_length=120),
    Field(description="A Salesforce API name (sObject or field), e.g. Account or Ext_Id__c"),
]
SalesforceId = Annotated[
    str,
    StringConstraints(pattern=SALESFORCE_ID_PATTERN),
    Field(description="A 15- or 18-character Salesforce record id"),
]
ParamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
FieldValue = str | int | float | bool | None
ParamValue = str | int | float | bool | None


class ErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    FORBIDDEN_ACCOUNT = "FORBIDDEN_ACCOUNT"
    AUTH_FAILED = "AUTH_FAILED"
    RATE_LIMITED = "RATE_LIMITED"
    TIMEOUT = "TIMEOUT"
    SALESFORCE_ERROR = "SALESFORCE_ERROR"
    SALESFORCE_UNAVAILABLE = "SALESFORCE_UNAVAILABLE"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    JOB_ID_REUSED = "JOB_ID_REUSED"
    RESULT_TOO_LARGE = "RESULT_TOO_LARGE"


class Status(StrEnum):
    OK = "ok"
    NO_DATA = "no_data"
    FAILED = "failed"


class Operation(StrEnum):
    SEARCH = "search"
    GET = "get"
    INSERT = "insert"
    UPDATE = "update"
    UPSERT = "upsert"
    DELETE = "delete"


# --- request -------------------------------------------------------------------------------


class _JobBase(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    v: Literal[1] = Field(description="Contract version; always 1")
    job_id: str = Field(
        min_length=1,
        max_length=128,
        description="Unique id of this block execution; the idempotency key",
    )
    account: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Integration account name; omitted -> the account marked default",
    )
    tenant: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="When set, the account must belong to this tenant",
    )
    timeout_ms: int = Field(
        default=8000,
        ge=100,
        le=60000,
        description="Budget, counted from sent_at, else the AMQP timestamp, else receipt",
    )
    sent_at: float | None = Field(
        default=None,
        gt=0,
        description="Unix time (seconds, may be fractional) at which the runtime sent the job",
    )


class SearchJob(_JobBase):
    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["soql"]}, {"required": ["sosl"]}]}
    )

    operation: Literal["search"]
    soql: str | None = Field(
        default=None,
        min_length=1,
        max_length=100_000,
        description="SOQL statement with optional :name placeholders",
    )
    sosl: str | None = Field(
        default=None,
        min_length=1,
        max_length=100_000,
        description="SOSL statement with optional :name placeholders",
    )
    params: dict[ParamName, ParamValue] = Field(
        default_factory=dict,
        description="Values bound to :name placeholders; escaped by the worker",
    )
    max_records: int = Field(default=200, ge=1, le=2000, description="Most records returned")

    @model_validator(mode="after")
    def _one_language(self) -> SearchJob:
        if (self.soql is None) == (self.sosl is None):
            raise ValueError("exactly one of soql or sosl is required")
        return self


class GetJob(_JobBase):
    operation: Literal["get"]
    sobject: ApiName = Field(alias="object")
    id: SalesforceId
    fields: list[ApiName] | None = Field(
        default=None, min_length=1, max_length=500, description="Fields to read; omitted -> all"
    )


class InsertJob(_JobBase):
    operation: Literal["insert"]
    sobject: ApiName = Field(alias="object")
    fields: dict[ApiName, FieldValue] = Field(min_length=1, max_length=800)


class UpdateJob(_JobBase):
    operation: Literal["update"]
    sobject: ApiName = Field(alias="object")
    id: SalesforceId
    fields: dict[ApiName, FieldValue] = Field(min_length=1, max_length=800)


class UpsertJob(_JobBase):
    operation: Literal["upsert"]
    sobject: ApiName = Field(alias="object")
    external_id_field: ApiName
    external_id: str = Field(
        min_length=1,
        max_length=255,
        json_schema_extra={"not": {"enum": [".", ".."]}},
        description="The external id value; not `.` or `..` (URL normalisation would turn "
        "them into another resource)",
    )
    fields: dict[ApiName, FieldValue] = Field(min_length=1, max_length=800)

    @model_validator(mode="after")
    def _no_key_in_body(self) -> UpsertJob:
        if self.external_id in (".", ".."):
            raise ValueError("external_id must not be '.' or '..'")
        names = {name.lower() for name in self.fields}
        if "id" in names:
            raise ValueError("fields must not contain Id in an upsert")
        if self.external_id_field.lower() in names:
            raise ValueError(
                f"fields must not contain the external id field {self.external_id_field}"
            )
        return self


class DeleteJob(_JobBase):
    operation: Literal["delete"]
    sobject: ApiName = Field(alias="object")
    id: SalesforceId


Job = Annotated[
    SearchJob | GetJob | InsertJob | UpdateJob | UpsertJob | DeleteJob,
    Field(discriminator="operation"),
]


AnyJob = SearchJob | GetJob | InsertJob | UpdateJob | UpsertJob | DeleteJob
JOB_ADAPTER: TypeAdapter[AnyJob] = TypeAdapter(Job)


# --- result --------------------------------------------------------------------------------


class SalesforceErrorItem(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    errorCode: str  # Salesforce's own spelling
    message: str
    fields: list[str] = Field(default_factory=list)


class ResultError(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    code: ErrorCode
    message: str
    retryable: bool = Field(description="True when the same job may succeed if sent again later")
    salesforce_errors: list[SalesforceErrorItem] = Field(default_factory=list)


class BlockResult(BaseModel):
    """What the worker publishes back for every job it takes."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    v: Literal[1] = 1
    job_id: str = Field(description='The job id, or "" when the request could not be read')
    operation: Operation | None = None
    account: str | None = None
    status: Status = Field(description="The block's exit: ok, no_data or failed")
    records: list[dict[str, Any]] | None = Field(
        default=None,
        description="search: the records (with Salesforce's attributes); get: the one record",
    )
    count: int | None = Field(default=None, description="search: Salesforce's totalSize")
    id: str | None = Field(default=None, description="insert/upsert: the record id")
    created: bool | None = Field(default=None, description="upsert: true when a record was created")
    http_status: int | None = Field(
        default=None, description="Status of the last Salesforce response"
    )
    error: ResultError | None = None
    attempts: int = Field(default=0, ge=0, description="Salesforce calls made for the operation")
    duration_ms: int = Field(default=0, ge=0, description="Time from receipt to result")


def parse_job(data: Any) -> AnyJob:
    """Validate a decoded JSON body as a v1 job (raises pydantic.ValidationError). Strict, as
    the JSON Schema is: `"5000"` or `true` is not an integer, a number is not a string."""
    return JOB_ADAPTER.validate_python(data, strict=True)
