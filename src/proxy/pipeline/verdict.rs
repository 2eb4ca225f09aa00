//! Step 3 of the pipeline: the service's rules judge the request (a `_method` in its body
//! included, row 105), and the verdict is carried out: a denial or a spent limit refuses it, a
//! hold reads its body and waits for an operator ([`crate::proxy::hold`]).

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::Call;
use crate::http::body::WHOLE_BODY_MAX;
use crate::http::head::Framing;
use crate::proxy::error::{ErrorKind, ProxyError};
use crate::proxy::hold;
use crate::proxy::inject;
use crate::proxy::outcome::ExchangeError;
use crate::rules::{Rule, Verdict};
use crate::spec::RuleAction;

impl<'a, C: AsyncReadRent + AsyncWriteRent> Call<'a, C> {
    /// Judges the request by the service's rules and carries out the verdict; the row names the
    /// rule that decided.
    pub(super) async fn verdict(&mut self) -> Result<(), ExchangeError> {
        let verdict = self.prepared.verdict;
        let verdict = self.judge_body(verdict).await?;
        self.row.rule = verdict.name().map(str::to_owned);
        self.apply(verdict).await
    }

    /// Review W1: Rails, Laravel and Symfony act on a `_method` field of a form or JSON body.
    /// When one could make the verdict stricter (the service's rules name a method that would),
    /// the body is read (a `Content-Length` of at most [`WHOLE_BODY_MAX`], kept for
    /// sending) and each `_method` in it judged like the query's; a body that cannot be read
    /// first or parsed as its framework would is refused (`rule_method_ambiguous`).
    async fn judge_body(&mut self, verdict: Verdict<'a>) -> Result<Verdict<'a>, ExchangeError> {
        let (req, route) = (self.req, self.route);
        let service = self.prepared.service;
        let Some(rules) = service.rules.as_deref() else {
            return Ok(verdict);
        };
        if self.prepared.framing == Framing::Empty {
            return Ok(verdict);
        }
        let Some(content_type) = req.one("content-type").ok().flatten() else {
            return Ok(verdict);
        };
        let (path, query) = inject::path_and_query(req, route.target, route.absolute_ok)?;
        if !rules.body_method_matters(route.agent, req, path, query, verdict) {
            return Ok(verdict);
        }
        let ambiguous = |why: &str| {
            let m = format!(
                "service {}'s rules judge methods, and this body may name another (`_method`): {why}",
                service.name
            );
            ProxyError::new(ErrorKind::RuleMethodAmbiguous, m)
                .hint("send the method itself, with a Content-Length body")
        };
        let body = match self.prepared.framing {
            Framing::Length(n) if n <= WHOLE_BODY_MAX => self.hold_body(n).await?,
            // A hold needs the body in hand too, and refuses it with its own error.
            _ if verdict.action == RuleAction::Hold => return Ok(verdict),
            _ => {
                let why = format!(
                    "a body that is not Content-Length of at most {} bytes cannot be read first",
                    WHOLE_BODY_MAX
                );
                return Err(ambiguous(&why).into());
            }
        };
        let methods = crate::rules::body_methods(content_type, &body)
            .map_err(|_| ambiguous("a multipart body that mentions it is not parsed"))?;
        self.early = Some(body);
        if methods.is_empty() {
            return Ok(verdict);
        }
        let verdict = rules
            .evaluate_with(route.agent, req, path, query, &methods)
            .map_err(ProxyError::from)?;
        Ok(verdict)
    }

    /// Carries out the rules' verdict: a denial or a spent limit refuses the request; a hold
    /// reads its body and waits for an operator ([`hold`]).
    async fn apply(&mut self, verdict: Verdict<'_>) -> Result<(), ExchangeError> {
        let req = self.req;
        let passes = match verdict.action {
            RuleAction::Allow => true,
            RuleAction::Limit => verdict.rule.is_none_or(Rule::take),
            RuleAction::Deny | RuleAction::Hold => false,
        };
        if passes {
            return Ok(());
        }
        // Only a refusal or a hold says what decided it.
        let by = decided_by(&verdict, &self.prepared.service.name);
        let refused = |kind, message: String| {
            let hint = rule_hint(&verdict, &self.shared.api_base);
            Err(ProxyError::new(kind, message).hint(hint).into())
        };
        match verdict.action {
            RuleAction::Hold => self.hold(&by).await,
            RuleAction::Limit => {
                let m = format!("{by} allows no more requests like this one for now");
                refused(ErrorKind::RuleLimited, m)
            }
            // (`Allow` passed above.)
            RuleAction::Deny | RuleAction::Allow => {
                let m = format!("{by} refuses {} {}", req.method(), req.path());
                refused(ErrorKind::RuleDenied, m)
            }
        }
    }

    /// A held request (`by` says which rule held it): its body read whole, then it waits for
    /// an operator. The operator approves what they can read (row 109): no
    /// `Content-Encoding`, a `Content-Length` body of at most [`WHOLE_BODY_MAX`].
    async fn hold(&mut self, by: &str) -> Result<(), ExchangeError> {
        let (req, route) = (self.req, self.route);
        let encoded = req
            .one("content-encoding")
            .ok()
            .flatten()
            .is_some_and(|v| !v.trim_ascii().eq_ignore_ascii_case(b"identity"));
        if encoded {
            let m = format!(
                "{by} holds this request for an operator, who must be able to read its body: send it without Content-Encoding"
            );
            return Err(ProxyError::new(ErrorKind::HoldBodyEncoded, m).into());
        }
        let body = match self.prepared.framing {
            Framing::Empty => Vec::new(),
            Framing::Length(n) if n <= WHOLE_BODY_MAX => self.hold_body(n).await?,
            _ => {
                let m = format!(
                    "{by} holds this request for an operator, which needs a Content-Length body of at most {WHOLE_BODY_MAX} bytes"
                );
                return Err(ProxyError::new(ErrorKind::HoldBodyTooLarge, m).into());
            }
        };
        let held = hold::describe(req, route.target, &self.prepared, &body, self.shared);
        hold::wait(
            self.shared,
            &route.vault.name,
            route.agent,
            held,
            route.peer,
        )
        .await?;
        self.early = Some(body);
        Ok(())
    }
}

/// What decided a verdict, for its refusal's message: a rule, or the service's `rules_default`.
fn decided_by(verdict: &Verdict<'_>, service: &str) -> String {
    verdict.name().map_or_else(
        || format!("service {service}'s rules_default"),
        |r| format!("rule {r} of service {service}"),
    )
}

/// The hint of a refusal by the rules: the rule's own, else where the rules are listed.
fn rule_hint(verdict: &Verdict<'_>, api_base: &str) -> String {
    verdict
        .rule
        .map(|r| r.spec.hint.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("the rules are listed at {api_base}/v1/discover"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal names the rule that decided it, or the service's `rules_default`; its hint is
    /// the rule's own, else where the agent can read the rules.
    #[test]
    fn refusals_name_what_decided_them() {
        let default = Verdict::ALLOW;
        assert_eq!(
            decided_by(&default, "openai"),
            "service openai's rules_default"
        );
        assert_eq!(
            rule_hint(&default, "http://127.0.0.1:7480"),
            "the rules are listed at http://127.0.0.1:7480/v1/discover"
        );
    }
}
