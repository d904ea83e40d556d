"""The web page for people: `supervisor-daemon web`.

serve.py starts it (address, token, uvicorn), app.py builds the application, pages.py
renders the HTML pages, api.py the JSON API (described by openapi.py), live.py feeds the
inbox's live updates, security.py keeps it to the people meant to use it. Handlers call
daemon.services, the same functions as the CLI; nothing here writes SQL or decides a rule.
"""
