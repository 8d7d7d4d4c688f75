"""The HTTP face: the aiohttp application, its routes and the state they share.

Handlers read a request and hand it over; what happens to it afterwards lives below
(``router/dispatch/``). Nothing below this folder imports it.
"""
