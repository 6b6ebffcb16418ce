//! The chat template: the Jinja text the GGUF carries (`tokenizer.chat_template`), rendered
//! with minijinja configured as transformers configures Jinja (`trim_blocks`,
//! `lstrip_blocks`, Python string methods, `raise_exception`), so a conversation becomes the
//! exact prompt the model was trained on.

use keel_engine::generate::ChatMessage;
use minijinja::{context, Environment, Error, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the model's chat template does not compile: {0}")]
    Compile(String),
    /// The template refused the conversation (e.g. roles out of order): the client's fault.
    #[error("the model's chat template refused the conversation: {0}")]
    Refused(String),
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt` (what a chat request wants).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| TemplateError::Refused(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn python_string_methods_and_trimmed_blocks_work_as_in_transformers() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n{{ m.role.upper() }}: {{ m.content.strip() }}\n{% endfor %}\
             {% if add_generation_prompt %}A:{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let out = t.render(&[msg("user", "  hi ")], true).unwrap();
        assert_eq!(out, "USER: hi\nA:");
    }

    #[test]
    fn raise_exception_is_a_refusal_not_a_panic() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&[msg("assistant", "x")], false).unwrap_err();
        assert!(matches!(e, TemplateError::Refused(ref m) if m.contains("first must be user")));
    }

    #[test]
    fn a_broken_template_is_a_compile_error() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(TemplateError::Compile(_))
        ));
    }
}

/// The GGUF's template rendered against the reference (jinja2 configured as transformers
/// does; tests/fixtures/make_llm_fixtures.py made the fixture).
#[cfg(test)]
mod parity {
    use super::*;

    #[test]
    fn renders_byte_identical_to_the_reference() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/llm_chat_template.json"
        );
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let template = ChatTemplate::new(
            fixture["chat_template"].as_str().unwrap(),
            fixture["bos_token"].as_str().unwrap(),
            fixture["eos_token"].as_str().unwrap(),
        )
        .unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 8);
        for case in cases {
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| ChatMessage {
                    role: m["role"].as_str().unwrap().into(),
                    content: m["content"].as_str().unwrap().into(),
                })
                .collect();
            let add = case["add_generation_prompt"].as_bool().unwrap();
            assert_eq!(
                template.render(&messages, add).unwrap(),
                case["rendered"].as_str().unwrap(),
                "{}",
                case["name"]
            );
        }
    }
}
