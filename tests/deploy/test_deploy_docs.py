"""docs/deploy.md (the deploy reference; the README links to it): what it covers, and its log queries use the
workspace tables' columns."""

from __future__ import annotations

import re

from tests.deploy.contract import ROLES
from tests.deploy.deploy_script import ROOT

DEPLOY_DOC = ROOT / "docs" / "deploy.md"


def test_deploy_docs_cover_the_essentials():
    text = DEPLOY_DOC.read_text()
    for needle in (
        "azd up",
        "scripts/deploy.sh",
        "--openai-resource-id",
        "preprovision",
        *sorted(set(ROLES.values())),
        "az functionapp keys list",
        "postdeploy",
        "export CI_FILES_URL=https://<host>",
        "azd env get-value CI_FILES_URL",
        "az functionapp function keys list",
        "curl",
        "x-functions-key",
        "func azure functionapp logstream",
        "AppTraces",
        "outputBackstopDays",
        "OUTPUT_BACKSTOP_DAYS",
        "--output-backstop-days",
        "RUN_RETENTION_DAYS",
        "--run-retention-days",
        "RUNS_TABLE=codeinterpreterruns",
        "CONTAINER_LIFETIME_MINUTES=60",
        "## What removes what",
        "_webhooks/",
        "perInstanceConcurrency",
        "COPY_MEMORY_MB",
        "log-analytics",
        "application-insights",
    ):
        assert needle in text, f"docs/deploy.md does not mention {needle!r}"


def test_deploy_docs_roles_table_has_every_role_once():
    """The roles table (one row per role, its scope and why) lists exactly the roles of tests/deploy/contract.py."""
    text = DEPLOY_DOC.read_text()
    section = text.split("## Identity and roles", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \| [^|]+ \|$", section, re.M)
    roles = [role for role, _ in rows if role not in ("Role", "---")]
    assert sorted(roles) == sorted(ROLES.values())
    scope = dict(rows)["Storage Table Data Contributor"]
    assert "runs table" in scope and "only" in scope


# Columns of the workspace-based Application Insights tables (Azure Monitor Logs reference:
# AppTraces, AppRequests, AppExceptions), the ones a query here may use.
TABLE_COLUMNS = {
    "AppTraces": {"TimeGenerated", "Message", "SeverityLevel", "Properties", "OperationId", "OperationName"},
    "AppRequests": {"TimeGenerated", "Name", "Url", "ResultCode", "Success", "DurationMs", "OperationId"},
    "AppExceptions": {"TimeGenerated", "ExceptionType", "OuterMessage", "Details", "OperationId", "ProblemId"},
}
KQL_WORDS = {"where", "project", "order", "by", "asc", "desc", "ago", "tostring", "take", "and", "or", "false", "true"}


def workspace_queries(text: str) -> list[str]:
    queries = re.findall(r'"query": "((?:[^"\\]|\\.)*)"', text)
    queries += re.findall(r"`((?:AppTraces|AppRequests|AppExceptions) \|[^`]*)`", text)
    queries += re.findall(r"--analytics-query '((?:AppTraces|AppRequests|AppExceptions)[^']*)'", text)
    return queries


def unknown_columns(query: str) -> set[str]:
    """Names in a query that are neither its table's columns nor KQL words (string literals ignored)."""
    table = query.split("|")[0].strip()
    assert table in TABLE_COLUMNS, f"not a workspace table: {table}"
    code = re.sub(r'\\?"[^"\\]*\\?"', "", query)
    names = set(re.findall(r"\b[A-Za-z_]\w*\b", code)) - {table} - KQL_WORDS
    return {n for n in names if n not in TABLE_COLUMNS[table] and n != "InvocationId"}  # Properties.InvocationId


def test_log_queries_use_the_workspace_schema():
    queries = workspace_queries(DEPLOY_DOC.read_text())
    assert len(queries) >= 4, queries
    for query in queries:
        assert not unknown_columns(query), f"not a column of its table: {sorted(unknown_columns(query))}: {query}"


def test_schema_check_refuses_classic_names():
    assert unknown_columns("AppTraces | where timestamp > ago(1h) | project customDimensions, message") == {
        "timestamp",
        "customDimensions",
        "message",
    }
