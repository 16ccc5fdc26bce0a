"""Client side of the detection stream: :class:`Subscriber` (exactly-once, in-order delivery across restarts)."""

from quakemon.client.subscriber import Message, Position, Subscriber, load_position, save_position

__all__ = ["Message", "Position", "Subscriber", "load_position", "save_position"]
