"""The original library's design, for comparison: FastAPI + SQLAlchemy + SQLite, `GET /me`
reading the `session_id` cookie and looking the session and user up on every request.

Run: uvicorn original_app:app --loop uvloop --http httptools (DB path in ORIGINAL_DB).
Seed: python original_app.py seed N (session ids are the same cookie values seed.py makes).
"""
import os
import sys

from fastapi import Cookie, FastAPI, HTTPException
from sqlalchemy import ForeignKey, Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

engine = create_engine(f"sqlite:///{os.environ.get('ORIGINAL_DB', 'original.db')}")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email_address: Mapped[str] = mapped_column(String, unique=True)


class UserSession(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    confirmed: Mapped[bool] = mapped_column(default=False)
    user: Mapped[User] = relationship()


app = FastAPI()


@app.get("/me")
def me(session_id: str | None = Cookie(default=None)):
    with Session(engine) as db:
        s = db.scalar(select(UserSession).where(UserSession.id == session_id))
        if s is None or not s.confirmed:
            raise HTTPException(status_code=401)
        return {"id": s.user.id, "email_address": s.user.email_address}


if __name__ == "__main__" and sys.argv[1:2] == ["seed"]:
    sys.path.insert(0, os.path.dirname(__file__))
    from seed import token

    n = int(sys.argv[2])
    Base.metadata.create_all(engine)
    with Session(engine) as db:
        db.add_all(User(id=i + 1, email_address=f"user{i}@example.com") for i in range(n))
        db.flush()
        db.add_all(UserSession(id=token(i), user_id=i + 1, confirmed=True) for i in range(n))
        db.commit()
