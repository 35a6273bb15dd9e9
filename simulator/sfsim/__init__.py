"""A Salesforce simulator (OAuth + REST) with fault injection and a control API.

Tests, the demo and benchmarks run against it instead of Salesforce. It answers with the same
URLs, status codes, JSON shapes and error bodies as Salesforce does.
"""

from .app import create_app, run_simulator
from .auth import (
    DEFAULT_APP_NAME,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    DEFAULT_USERNAME,
)
from .ids import normalize_id, to_18
from .soql import Literal, SoqlQuery, parse_soql
from .soql_lexer import SoqlError
from .sosl import SearchTerm, SoslError, SoslQuery, parse_sosl
from .state import SimulatorState

__all__ = [
    "DEFAULT_APP_NAME",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_REFRESH_TOKEN",
    "DEFAULT_USERNAME",
    "Literal",
    "SearchTerm",
    "SimulatorState",
    "SoqlError",
    "SoqlQuery",
    "SoslError",
    "SoslQuery",
    "create_app",
    "normalize_id",
    "parse_soql",
    "parse_sosl",
    "run_simulator",
    "to_18",
]
