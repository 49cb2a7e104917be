-- wrk: every request is POST /api/v1/tasks with the same small JSON body.
-- bench/http_load.py's POST_BODY is the same body, for the Python loader.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"name": "demo.echo", "kwargs": {"message": "x"}}'
