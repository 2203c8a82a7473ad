//! Where a handshake carries its token.

use super::*;

/// The token of a handshake: `Authorization: Bearer …` or the `access_token` query parameter.
///
/// The scheme is matched case-insensitively; the query parameter is percent-decoded. A bearer
/// token in the header wins over the query. Empty tokens count as absent.
pub fn token_from_request(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get_all(AUTHORIZATION)
        .iter()
        .find_map(|value| bearer_token(value.to_str().ok()?))
        .map(str::to_owned)
        .or_else(|| query.and_then(query_token))
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn query_token(query: &str) -> Option<String> {
    if !query.contains("access_token") {
        return None;
    }
    // axum's `Query` extractor does the `application/x-www-form-urlencoded` decoding.
    let uri = Uri::try_from(format!("/?{query}")).ok()?;
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?;
    pairs
        .into_iter()
        .find(|(name, _)| name == "access_token")
        .map(|(_, token)| token)
        .filter(|t| !t.is_empty())
}
