//! The byte-level BPE tokenizer of a GGUF chat model, built from the file's
//! own metadata (`tokenizer.ggml.*`): vocabulary, merges, token types and
//! special ids. SmolLM2's pre-tokenizer (`smollm`) splits every digit on its
//! own, then applies the GPT-2 byte-level split.
//!
//! Special-token text (`<|im_start|>` …) is parsed as the special token only
//! when asked (raw completion prompts, as llama.cpp does); text from chat
//! messages is always encoded as plain text, so a user cannot inject one.

use maas_gguf::{Gguf, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    #[error("tokenizer: {0}")]
    Build(String),
}

pub struct ChatTokenizer {
    /// Special-token text stays text.
    plain: Tokenizer,
    /// Special-token text becomes the special token.
    special: Tokenizer,
    pub bos: u32,
    pub eos: u32,
    /// Ids that end a generation (end-of-turn, end-of-text, …).
    pub end_of_generation: Vec<u32>,
    tokens: Vec<String>,
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>, TokenizerError> {
    g.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| TokenizerError::Metadata(format!("{key} missing")))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| TokenizerError::Metadata(format!("{key}: not strings")))
        })
        .collect()
}

impl ChatTokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Self, TokenizerError> {
        let model = g
            .str("tokenizer.ggml.model")
            .map_err(|e| TokenizerError::Metadata(e.to_string()))?;
        if model != "gpt2" {
            return Err(TokenizerError::Metadata(format!(
                "tokenizer model '{model}' is not supported (gpt2 only)"
            )));
        }
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings(g, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| TokenizerError::Metadata(format!("merge '{m}'")))
            })
            .collect::<Result<_, _>>()?;
        let types: Vec<u64> = g
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let id = |key: &str| {
            g.u64(key)
                .map(|v| v as u32)
                .map_err(|e| TokenizerError::Metadata(e.to_string()))
        };
        let (bos, eos) = (
            id("tokenizer.ggml.bos_token_id")?,
            id("tokenizer.ggml.eos_token_id")?,
        );

        let build = |encode_special: bool| -> Result<Tokenizer, TokenizerError> {
            let bpe = BPE::builder()
                .vocab_and_merges(vocab.clone(), merges.clone())
                .build()
                .map_err(|e| TokenizerError::Build(e.to_string()))?;
            let mut t = Tokenizer::new(bpe);
            t.with_pre_tokenizer(Some(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, true)),
            ])));
            t.with_decoder(Some(ByteLevelDecoder::default()));
            // Control (3) and user-defined (4) tokens are matched whole.
            let specials: Vec<AddedToken> = tokens
                .iter()
                .zip(&types)
                .filter(|(_, ty)| matches!(**ty, 3 | 4))
                .map(|(tok, _)| AddedToken::from(tok.clone(), true))
                .collect();
            t.add_special_tokens(specials)
                .map_err(|e| TokenizerError::Build(e.to_string()))?;
            t.set_encode_special_tokens(encode_special);
            Ok(t)
        };
        // Ids that end a generation, as llama.cpp counts them: eos, the
        // end-of-turn and end-of-text tokens, and the fill-in-the-middle
        // repository/padding/file-separator tokens (for SmolLM2: 2, 0 and 4).
        let mut end_of_generation = vec![eos];
        for name in [
            "<|endoftext|>",
            "<|im_end|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<reponame>",
            "<|repo_name|>",
            "<|fim_pad|>",
            "<|file_sep|>",
        ] {
            if let Some(i) = tokens.iter().position(|t| t == name) {
                if !end_of_generation.contains(&(i as u32)) {
                    end_of_generation.push(i as u32);
                }
            }
        }
        if let Ok(e) = id("tokenizer.ggml.eot_token_id") {
            if !end_of_generation.contains(&e) {
                end_of_generation.push(e);
            }
        }
        Ok(Self {
            plain: build(true)?,
            special: build(false)?,
            bos,
            eos,
            end_of_generation,
            tokens,
        })
    }

    /// Token ids of `text`; `parse_special` turns special-token text into
    /// the special tokens (raw prompts), otherwise it stays text (chat messages).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let t = if parse_special {
            &self.special
        } else {
            &self.plain
        };
        t.encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Build(e.to_string()))
    }

    /// Text of ids (special tokens included as their text).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.special
            .decode(ids, false)
            .map_err(|e| TokenizerError::Build(e.to_string()))
    }

    /// The raw bytes a token stands for (a byte-level token may hold part
    /// of a UTF-8 character); special tokens give their text.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        t.chars()
            .map(byte_of_char)
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_else(|| t.as_bytes().to_vec())
    }

    /// A token's text for display (lossy where it holds part of a character).
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.token_bytes(id)).into_owned()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

/// The byte-level alphabet, inverted: printable bytes stand for themselves,
/// the other 68 bytes (0–32, 127–160, 173) for U+0100 onwards, in order.
fn byte_of_char(c: char) -> Option<u8> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let v = c as u32;
    if printable(v) {
        return Some(v as u8);
    }
    let n = v.checked_sub(256)?;
    (0u32..256)
        .filter(|b| !printable(*b))
        .nth(n as usize)
        .map(|b| b as u8)
}
