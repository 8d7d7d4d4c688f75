"""A request's path around the pure core: admission at the door (the asyncio queue of
``core/admission``), planning with its fallback, and the attempt loop that sends it to a
backend and relays the answer."""
