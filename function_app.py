"""Routes and triggers of the function app (Python v2 model). The logic lives in `code_interpreter_files`."""

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


@app.route(route="openai-webhook", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def openai_webhook(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Azure OpenAI says a run ended (signature verified): queue its finish."""
    return await http_api.handle(req, context, "openai_webhook", http_api.openai_webhook)


@app.queue_trigger(arg_name="msg", queue_name="%RUNS_QUEUE%", connection="RUNS_QUEUE_STORAGE")
async def finish_run(msg: func.QueueMessage, context: func.Context) -> None:
    """Follow a run to its end and copy its files, or deliver its callback (outside the HTTP limit)."""
    await http_api.on_queue_message(msg, context, "finish_run")


@app.queue_trigger(arg_name="msg", queue_name="%RUNS_QUEUE%-poison", connection="RUNS_QUEUE_STORAGE")
async def record_poison(msg: func.QueueMessage, context: func.Context) -> None:
    """A run that failed every retry: its manifest records the failure, so GET answers it."""
    await http_api.on_queue_message(msg, context, "record_poison")


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Whether the app is configured (names of missing settings only), and if the model is the offline stand-in."""
    return await http_api.health()
