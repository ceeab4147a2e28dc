//! One error type for request handling, and the one place it becomes an HTTP response.

use hyper::StatusCode;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("not signed in")]
    Unauthorized,
    #[error("cross-site request refused")]
    CrossSite,
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported content type; send a form or JSON")]
    UnsupportedMediaType,
    #[error("unsupported content type; send JSON (Content-Type: application/json)")]
    JsonOnly,
    #[error("the database is busy; try again")]
    Busy,
    /// The database cannot be used (see `StoreError::Unavailable`): fail closed.
    #[error("the service is temporarily unavailable; try again")]
    Unavailable(String),
    #[error("the request took too long")]
    Timeout,
    #[error("internal error: {0}")]
    Internal(String),
    /// The email API without a valid bearer token.
    #[error("{0}")]
    ApiUnauthorized(&'static str),
    /// The email API is not configured.
    #[error("the email API is off: set api.token_file (or AUTHBASE_API_TOKEN) to turn it on")]
    ApiOff,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    /// Over a limit; try again in `retry_after` seconds.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::CrossSite | AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType | AppError::JsonOnly => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            AppError::Busy | AppError::Timeout | AppError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::ApiUnauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::ApiOff => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// What the user is told. Internal details stay in the log, referenced by id.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Internal(_) => "Something went wrong on our side.".into(),
            AppError::CrossSite => {
                "This request came from another site and was refused. Start again from the sign-in page.".into()
            }
            AppError::Busy | AppError::Timeout => {
                "This is taking longer than it should. Please try again in a moment.".into()
            }
            other => {
                let mut s = other.to_string();
                // Field names (`reply_to`, `attachments[0].filename`) keep their spelling.
                let first = s.split(' ').next().unwrap_or("");
                if !first.contains(['_', '[', '.']) {
                    if let Some(c) = s.get_mut(0..1) {
                        c.make_ascii_uppercase();
                    }
                }
                s
            }
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy => AppError::Busy,
            StoreError::Db(m) => AppError::Internal(m),
            StoreError::Unavailable(m) => AppError::Unavailable(m),
        }
    }
}
