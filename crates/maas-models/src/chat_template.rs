//! The chat template of a GGUF model (`tokenizer.chat_template`, Jinja),
//! rendered with minijinja, and turned into token ids so that the template's
//! own special tokens are special while message text never is.

use crate::chat_tokenizer::{ChatTokenizer, TokenizerError};
use minijinja::{context, Environment};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template: {0}")]
    Render(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

pub struct ChatTemplate {
    env: Environment<'static>,
}

/// Marks where message text goes in a rendering, from Unicode's private
/// use planes: no template produces these, and they are removed before use.
const OPEN: char = '\u{F0000}';
const CLOSE: char = '\u{F0001}';

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        Ok(Self { env })
    }

    /// The prompt text, as the model was trained to see it.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        t.render(context! { messages => messages, add_generation_prompt => add_generation_prompt })
            .map_err(|e| TemplateError::Render(e.to_string()))
    }

    /// Token ids of the rendered prompt: template text with special tokens
    /// parsed, message text encoded as plain text.
    pub fn encode(
        &self,
        tok: &ChatTokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TemplateError> {
        let marked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message {
                role: m.role.clone(),
                content: format!("{OPEN}{i}{CLOSE}"),
            })
            .collect();
        let text = self.render(&marked, add_generation_prompt)?;
        let mut ids = Vec::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find(OPEN) {
            ids.extend(tok.encode(&rest[..start], true)?);
            let after = &rest[start + OPEN.len_utf8()..];
            let end = after
                .find(CLOSE)
                .ok_or_else(|| TemplateError::Render("unbalanced message marker".into()))?;
            let i: usize = after[..end]
                .parse()
                .map_err(|_| TemplateError::Render("bad message marker".into()))?;
            let m = messages
                .get(i)
                .ok_or_else(|| TemplateError::Render("bad message index".into()))?;
            ids.extend(tok.encode(&m.content, false)?);
            rest = &after[end + CLOSE.len_utf8()..];
        }
        ids.extend(tok.encode(rest, true)?);
        Ok(ids)
    }
}
