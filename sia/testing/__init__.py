"""Loopback stand-ins for the real LLM APIs, so tests drive the real SDKs over real HTTP.

    with AnthropicServer(responder) as srv:
        provider = get_provider("anthropic", base_url=srv.base_url)

Each server binds 127.0.0.1 on a free port, serves from daemon threads, scripts faults,
records every request, and stops when its `with` block ends.
"""

from sia.testing.anthropic_server import AnthropicServer
from sia.testing.loopback import (
    CallTools,
    Conversation,
    ConversationMismatch,
    Fault,
    FinalAnswer,
    RecordedRequest,
    Reply,
    Script,
    ScriptedCall,
)
from sia.testing.openai_server import OpenAIServer

__all__ = ["AnthropicServer", "CallTools", "Conversation", "ConversationMismatch", "Fault", "FinalAnswer",
           "OpenAIServer", "RecordedRequest", "Reply", "Script", "ScriptedCall"]
