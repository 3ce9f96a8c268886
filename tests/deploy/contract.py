"""The settings table (the session contract): names, the defaults the deploy files spell out, the app's
valid ranges, and where each is set; the role table; the Azure resource ids the deploy script builds.
Deploy files are checked against it (test_app_settings, test_bicep, test_deploy_script); the app is checked
against it too (test_settings_table: names from settings.SETTING_NAMES, ranges by loading settings)."""

from __future__ import annotations

from dataclasses import dataclass

from tests.deploy.deploy_script import APP, OUTPUT_STORAGE, RG, STORAGE


@dataclass(frozen=True)
class Setting:
    default: str | None = None  # what Bicep and the script set by default (None: computed, or unset)
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    # always | optional (set only when given) | never (local only) | platform | derived (the app derives it
    # from another setting in Azure: the deploy files leave it unset)
    azure: str = "always"
    secret: bool = False


SETTINGS: dict[str, Setting] = {
    "AZURE_OPENAI_ENDPOINT": Setting(),
    "AZURE_OPENAI_DEPLOYMENT": Setting(),
    "AZURE_OPENAI_API_VERSION": Setting(choices=("v1", "preview", "latest"), azure="optional"),
    "AZURE_OPENAI_API_KEY": Setting(azure="never", secret=True),
    "AZURE_OPENAI_TOKEN_SCOPE": Setting("https://ai.azure.com/.default"),
    "OUTPUT_STORAGE_ACCOUNT_URL": Setting(),
    "OUTPUT_STORAGE_CONNECTION_STRING": Setting(azure="never", secret=True),
    "OUTPUT_CONTAINER": Setting("code-interpreter-outputs"),
    "INPUT_CONTAINER": Setting("code-interpreter-inputs"),
    "RUNS_TABLE": Setting("codeinterpreterruns"),
    "RUNS_TABLE_SERVICE_URL": Setting(azure="derived"),  # https://<account>.table.<suffix> from the account URL
    "RUN_RETENTION_DAYS": Setting("30", 0, 3650),
    "CONTAINER_LIFETIME_MINUTES": Setting("60", 1, 1440),
    "SAS_TTL_MINUTES": Setting("60", 1, 10015),
    "SAS_TTL_MAX_MINUTES": Setting("1440", 1, 10015),
    "MAX_FILES_PER_RUN": Setting("20", 1, 1000),
    "MAX_FILE_BYTES": Setting("536870912", 1, 4398046511104),
    "RUN_WAIT_SECONDS": Setting("180", 1, 210),
    "COPY_CONCURRENCY": Setting("4", 1, 64),
    "COPY_MEMORY_MB": Setting("512", 16, 16384),
    "RUN_EVENTS": Setting("stream", choices=("stream", "poll")),
    "RUN_EVENTS_IDLE_SECONDS": Setting("30", 1, 600),
    "RUNS_QUEUE": Setting("code-interpreter-runs"),
    "RUNS_QUEUE_STORAGE__queueServiceUri": Setting(),
    "RUNS_QUEUE_STORAGE": Setting(azure="never", secret=True),
    "MAX_INPUT_FILES": Setting("10", 1, 50),
    "MAX_INPUT_BYTES": Setting("536870912", 1, 8589934592),
    "CALLBACK_ALLOWED_HOSTS": Setting(azure="optional"),
    "CALLBACK_SIGNING_SECRET": Setting(azure="optional", secret=True),
    "AZURE_OPENAI_WEBHOOK_SECRET": Setting(azure="optional", secret=True),
    "OWNER_TAG": Setting(azure="optional"),
    "WEBSITE_AUTH_ENABLED": Setting(azure="platform"),  # set by App Service authentication, never by us
}
SET_IN_AZURE = {n for n, s in SETTINGS.items() if s.azure == "always"}
OPTIONAL_IN_AZURE = {n for n, s in SETTINGS.items() if s.azure == "optional"}
NEVER_IN_AZURE = {n for n, s in SETTINGS.items() if s.azure in ("never", "platform", "derived")}

# Platform settings that are not the app's own but may (or must) be set.
PLATFORM_EXACT = {
    "AZURE_CLIENT_ID",  # read by azure-identity: picks the user-assigned managed identity
    "RUNS_QUEUE_STORAGE__credential",  # the queue trigger's identity-based connection (host)
    "RUNS_QUEUE_STORAGE__clientId",
}
PLATFORM_PREFIXES = (
    "AzureWebJobs",  # Functions host storage (AzureWebJobsStorage__* in Azure, Azurite locally)
    "APPLICATIONINSIGHTS_",  # telemetry connection + Entra ID auth of the host
    "FUNCTIONS_",  # worker runtime (local only; Flex Consumption sets it via functionAppConfig)
    "DEPLOYMENT_STORAGE",  # Flex Consumption deployment storage
)
# Platform settings the identity-based Azure deployment must set.
REQUIRED_PLATFORM_IN_AZURE = {
    "AZURE_CLIENT_ID",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "RUNS_QUEUE_STORAGE__credential",
    "RUNS_QUEUE_STORAGE__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}

SUB = "<subscription-id>"
RG_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}"
STORAGE_ID = f"{RG_ID}/providers/Microsoft.Storage/storageAccounts/{STORAGE}"
OUTPUT_STORAGE_ID = f"{RG_ID}/providers/Microsoft.Storage/storageAccounts/{OUTPUT_STORAGE}"
RUNS_TABLE_ID = f"{OUTPUT_STORAGE_ID}/tableServices/default/tables/{SETTINGS['RUNS_TABLE'].default}"
APPI_ID = f"{RG_ID}/providers/Microsoft.Insights/components/appi-{APP}"
IDENTITY_ID = f"{RG_ID}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-{APP}"


def is_platform(name: str) -> bool:
    return name in PLATFORM_EXACT or name.startswith(PLATFORM_PREFIXES)


def app_setting_names() -> tuple[str, ...]:
    from code_interpreter_files.settings import SETTING_NAMES

    assert SETTING_NAMES and all(isinstance(n, str) for n in SETTING_NAMES)
    return tuple(SETTING_NAMES)


# The smallest valid configuration (local style), to load the app's settings around it.
BASE_ENV = {
    "AZURE_OPENAI_ENDPOINT": "https://aoai.openai.azure.com",
    "AZURE_OPENAI_DEPLOYMENT": "dep",
    "OUTPUT_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
    "RUNS_QUEUE_STORAGE": "UseDevelopmentStorage=true",
}


def load_app_settings(**env: str) -> object:
    from code_interpreter_files.settings import load_settings

    return load_settings({**BASE_ENV, **env})


def refused(name: str, value: str, **env: str) -> bool:
    try:
        load_app_settings(**{name: value, **env})
    except Exception as error:  # the app's settings error: names the setting, never the value
        assert name in str(error), f"{name}={value}: the error does not name it: {error}"
        return True
    return False


RANGED = sorted(n for n, s in SETTINGS.items() if s.low is not None)

# The output container's lifecycle rule is a backstop behind the retention sweep: its default period
# (outputBackstopDays in infra/main.bicep, --output-backstop-days in scripts/deploy.sh) is longer.
BACKSTOP_DAYS = 60


def backstop_goes_on(retention_days: int, backstop_days: int) -> bool:
    """Python twin of main.bicep's guard (test_bicep asserts it verbatim): retention off (0), or a longer backstop."""
    return retention_days == 0 or backstop_days > retention_days


# Role definition ids (Azure built-in roles) and their names: infra/rbac.bicep and docs/deploy.md use them.
ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
    "db58b8e5-c6ad-4a2a-8342-4190687cbf4a": "Storage Blob Delegator",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd": "Cognitive Services OpenAI User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}
