"""Whether the model behind AZURE_OPENAI_DEPLOYMENT is the offline stand-in, for /api/health to say so.

The stand-in (local_azure/, `scripts/start.sh --offline`) answers the deployment's model object,
`GET /openai/v1/models/{deployment}`, with `owned_by: "offline-stand-in"`; Azure OpenAI never does. Only
an endpoint on this machine can be the stand-in, so Azure is never asked: in Azure the health probe stays
a settings check. A local endpoint is asked once per worker and configuration (an answer is kept; a
failure, e.g. the stand-in still starting, is asked again next time), with a short timeout and no retry.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .runlog import logger
from .services import Services

#: `owned_by` of the stand-in's model object (local_azure/standin.py STAND_IN_OWNER; a test keeps them equal).
STAND_IN_OWNER = "offline-stand-in"
NOTICE = (
    "the model is an offline stand-in (local_azure/), not Azure OpenAI: no model runs; it creates files, "
    "plots and summarises CSV inputs, and says what else it understands"
)
TIMEOUT_SECONDS = 5.0

_known: dict[tuple[str, str], bool] = {}


def is_local(base_url: str) -> bool:
    """An endpoint on this machine: localhost or a loopback address."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def is_offline_stand_in(services: Services) -> bool:
    """True when the deployment's model object says it is the offline stand-in."""
    settings = services.settings
    if not is_local(settings.openai_base_url):
        return False
    key = (settings.openai_base_url, settings.deployment)
    if key not in _known:
        client = services.openai.with_options(max_retries=0, timeout=TIMEOUT_SECONDS)
        try:
            model = await client.models.retrieve(settings.deployment)
        except Exception as error:  # unreachable, refused, no token: not known to be the stand-in
            logger.debug("the local model endpoint did not describe its model: %s", type(error).__name__)
            return False
        _known[key] = getattr(model, "owned_by", None) == STAND_IN_OWNER
    return _known[key]
