"""The `router` resource of the exchange interface (componentize-py looks for it in a
module named after the interface)."""

from typing import List

from componentize_py_types import Err
from wit_world.exports import exchange
from wit_world.imports import host, types


class Router(exchange.Router):
    def __init__(self) -> None:
        self.bindings: List[types.Binding] = []

    @classmethod
    def create(cls, arguments: List[types.Field]) -> "Router":
        if arguments:
            raise Err("x-prefix takes no arguments, got " + ", ".join(f.name for f in arguments))
        host.log(host.Level.DEBUG, "x-prefix exchange created")
        return cls()

    def routes_on_key_only(self) -> bool:
        return True

    def validate_binding(self, binding: types.Binding) -> None:
        if len(binding.key) > 255:
            raise Err("binding key longer than 255 octets")

    def add_binding(self, binding: types.Binding) -> None:
        self.bindings.append(binding)

    def remove_binding(self, binding: types.Binding) -> None:
        if binding in self.bindings:
            self.bindings.remove(binding)

    def route(self, message: types.Message) -> List[types.Destination]:
        if message.routing_key == "raise":
            # An uncaught exception traps: the host counts it and rebuilds the instance.
            raise RuntimeError("asked to fail")
        if message.routing_key.startswith("print."):
            # stdout and stderr become broker log lines tagged with the plugin.
            print("routing", message.routing_key)
        return [b.destination for b in self.bindings if message.routing_key.startswith(b.key)]
