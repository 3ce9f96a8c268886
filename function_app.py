"""HTTP routes of the function app (Python v2 model). The logic lives in `code_interpreter_files`."""

import azure.functions as func

from code_interpreter_files import http_api

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="runs", methods=["POST"])
async def create_run(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Run a prompt with Code Interpreter; answer with links to every file it made."""
    return await http_api.handle(req, context, "create_run", http_api.create_run)


@app.route(route="runs/{response_id}", methods=["GET"])
async def get_run(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """A run's files with freshly signed links; finishes a run that was still going."""
    return await http_api.handle(req, context, "get_run", http_api.get_run)


@app.route(route="runs/{response_id}", methods=["DELETE"])
async def delete_run(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Cancel a run if it still runs, and delete its files."""
    return await http_api.handle(req, context, "delete_run", http_api.delete_run)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Whether the app is configured (names of missing settings only)."""
    return http_api.health()
