"""Routes and triggers of the function app (Python v2 model). The logic lives in `code_interpreter_files`."""

import azure.functions as func

from code_interpreter_files import http_api, queue_finish, retention

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="runs", methods=["POST"])
async def create_run(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Run a prompt with Code Interpreter; answer with links to every file it made."""
    return await http_api.handle(req, context, "create_run", http_api.create_run)


@app.route(route="runs", methods=["GET"])
async def list_runs(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """The caller's runs, newest first, a page at a time (`limit`, `cursor`, `status`)."""
    return await http_api.handle(req, context, "list_runs", http_api.list_runs)


@app.route(route="runs/{response_id}", methods=["GET"])
async def get_run(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """A run's files with freshly signed links; finishes a run that was still going."""
    return await http_api.handle(req, context, "get_run", http_api.get_run)


@app.route(route="runs/{response_id}", methods=["DELETE"])
async def delete_run(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Cancel a run if it still runs, and delete its files and records."""
    return await http_api.handle(req, context, "delete_run", http_api.delete_run)


@app.route(route="openai-webhook", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def openai_webhook(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Azure OpenAI says a run ended (signature verified): queue its finish."""
    return await http_api.handle(req, context, "openai_webhook", http_api.openai_webhook)


@app.queue_trigger(arg_name="msg", queue_name="%RUNS_QUEUE%", connection="RUNS_QUEUE_STORAGE")
async def finish_run(msg: func.QueueMessage, context: func.Context) -> None:
    """Follow a run to its end and finish it, or deliver its callback (outside the HTTP limit)."""
    await queue_finish.on_message(msg.get_body(), context, "finish_run")


@app.queue_trigger(arg_name="msg", queue_name="%RUNS_QUEUE%-poison", connection="RUNS_QUEUE_STORAGE")
async def record_poison(msg: func.QueueMessage, context: func.Context) -> None:
    """A run whose finish crashed on every try: its record says so, and a GET tries again."""
    await queue_finish.on_message(msg.get_body(), context, "record_poison")


@app.timer_trigger(arg_name="timer", schedule="0 */10 * * * *", run_on_startup=False)
async def sweep_runs(timer: func.TimerRequest, context: func.Context) -> None:
    """Every 10 minutes: delete runs past RUN_RETENTION_DAYS, queue runs whose finish was lost."""
    await retention.on_timer(context)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Whether the app is configured (names of missing settings only), and if the model is the offline stand-in."""
    return await http_api.health()
