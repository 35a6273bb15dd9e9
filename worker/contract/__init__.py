"""The wire contract, v1: job and result models (`models`), the JSON Schema and examples in
`contracts/` generated from them (`gen`), and the AsyncAPI document (`asyncapi`)."""

from worker.contract.models import (
    CONTRACT_VERSION,
    JOB_ADAPTER,
    SALESFORCE_ID_PATTERN,
    AnyJob,
    BlockResult,
    DeleteJob,
    ErrorCode,
    GetJob,
    InsertJob,
    Operation,
    ParamValue,
    ResultError,
    SalesforceErrorItem,
    SearchJob,
    Status,
    UpdateJob,
    UpsertJob,
    parse_job,
)

__all__ = [
    "CONTRACT_VERSION",
    "JOB_ADAPTER",
    "SALESFORCE_ID_PATTERN",
    "AnyJob",
    "BlockResult",
    "DeleteJob",
    "ErrorCode",
    "GetJob",
    "InsertJob",
    "Operation",
    "ParamValue",
    "ResultError",
    "SalesforceErrorItem",
    "SearchJob",
    "Status",
    "UpdateJob",
    "UpsertJob",
    "parse_job",
]
