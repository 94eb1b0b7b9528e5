"""The browser playground: a page and its scripts, shipped in the package, served as they are.

No build step and nothing from a CDN, so the page works on a machine with no internet. The page
talks to the same API as any client, with relative URLs, so it also works behind a proxy that
serves omniserve under a path prefix.
"""

from omniserve.web.routes import playground_router

__all__ = ["playground_router"]
