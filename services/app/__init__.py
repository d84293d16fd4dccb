"""Use cases the HTTP API and the console share: routes and pages parse a request, then call one."""
