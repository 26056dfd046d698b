"""User-interactive authentication (the spec's UIA): sessions, flows and stages."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.storage.uia import UIARepository

# Sessions older than this are forgotten (Synapse keeps them for 48 h too).
SESSION_LIFETIME_MS = 48 * 3600 * 1000

Stage = Callable[[dict[str, Any], "UIAContext"], Awaitable[Any]]


class InteractiveAuthRequired(MatrixError):
    """The 401 that tells the client which flows remain; an ``errcode`` only if a stage failed."""

    def __init__(self, body: dict[str, Any], error: MatrixError | None = None) -> None:
        super().__init__(401, error.errcode if error else "", error.msg if error else "Interactive auth required")
        self.body = body
        self.error = error

    def to_json(self) -> dict[str, Any]:
        out = dict(self.body)
        if self.error is not None:
            out["errcode"] = self.error.errcode
            out["error"] = self.error.msg
        return out


class UIAContext:
    """What a stage may need: who is authenticating, and the session's server-side data."""

    def __init__(self, session_id: str, user_id: str | None, serverdict: dict[str, Any]) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.serverdict = serverdict


class UserInteractiveAuth:
    def __init__(self, *, clock: Clock, sessions: UIARepository, stages: dict[str, Stage]) -> None:
        self._clock = clock
        self._sessions = sessions
        self._stages = stages

    def add_stage(self, name: str, stage: Stage) -> None:
        self._stages[name] = stage

    async def check(
        self,
        *,
        body: dict[str, Any],
        flows: Sequence[Sequence[str]],
        uri: str,
        method: str,
        description: str,
        user_id: str | None = None,
        params: dict[str, Any] | None = None,
        serverdict: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """Advance the session with ``body["auth"]``; return (completed stages, session, serverdict)
        once a flow is complete, else raise :class:`InteractiveAuthRequired`.
        """
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter auth must be an object")
        auth = auth or {}
        session_id = auth.get("session")
        now = self._clock.time_msec()
        if session_id is None:
            session_id = secrets.token_urlsafe(24)
            stored = dict(serverdict or {})
            await self._sessions.create_session(session_id, now, uri, method, description, stored, user_id)
            session_user = user_id
        else:
            if not isinstance(session_id, str):
                raise MatrixError(400, Codes.BAD_JSON, "Parameter auth.session must be a string")
            session = await self._sessions.get_session(session_id)
            if session is None or now - session.created_ts > SESSION_LIFETIME_MS:
                raise MatrixError(400, Codes.UNKNOWN, "Unknown session ID")
            if session.uri != uri or session.method != method or session.user_id != user_id:
                raise MatrixError(
                    403, Codes.FORBIDDEN, "Requested operation has changed during the UI authentication session."
                )
            stored = session.serverdict
            session_user = session.user_id
        completed = await self._sessions.get_completed_stages(session_id)
        stage_error: MatrixError | None = None
        stage_type = auth.get("type")
        if stage_type is not None:
            allowed = {s for flow in flows for s in flow}
            if not isinstance(stage_type, str) or stage_type not in allowed or stage_type not in self._stages:
                stage_error = MatrixError(400, Codes.UNRECOGNIZED, f"Unrecognised auth type: {stage_type}")
            else:
                ctx = UIAContext(session_id, session_user, stored)
                try:
                    result = await self._stages[stage_type](auth, ctx)
                except MatrixError as e:
                    if e.code == 429:
                        raise
                    stage_error = e
                else:
                    completed[stage_type] = result
                    await self._sessions.mark_stage_complete(session_id, stage_type, result)
                    await self._sessions.set_serverdict(session_id, ctx.serverdict)
        for flow in flows:
            if all(stage in completed for stage in flow):
                return completed, session_id, stored
        raise InteractiveAuthRequired(
            {
                "session": session_id,
                "flows": [{"stages": list(flow)} for flow in flows],
                "params": params or {},
                "completed": sorted(completed),
            },
            stage_error,
        )

    async def finish(self, session_id: str) -> None:
        """The operation succeeded: the session can't be replayed."""
        await self._sessions.delete_session(session_id)

    async def expire_old_sessions(self) -> None:
        await self._sessions.delete_expired(self._clock.time_msec() - SESSION_LIFETIME_MS)
