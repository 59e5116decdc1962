//! A client of the console over HTTP on 127.0.0.1: signs in with a token,
//! keeps the session cookie, reads pages and posts forms.

use std::net::SocketAddr;

pub struct Console {
    base: String,
    http: reqwest::Client,
    cookie: String,
}

/// The value of `name="..." value="..."` in a page (the first such input).
pub fn input_value(page: &str, name: &str) -> String {
    let at = page.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no input {name} in {page}"));
    let rest = &page[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

impl Console {
    /// Signs in with `token` (panics when refused).
    pub async fn sign_in(addr: SocketAddr, token: &str) -> Console {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let base = format!("http://{addr}");
        let r = http.post(format!("{base}/console/login")).form(&[("token", token)]).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 303, "sign-in refused");
        let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
        Console { base, http, cookie }
    }

    /// A page: its status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(format!("{}{path}", self.base)).header("cookie", &self.cookie).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Posts a form: the status, the body and where it redirects to.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap();
        let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
        (r.status().as_u16(), r.text().await.unwrap(), location)
    }
}
