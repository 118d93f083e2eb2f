//! `dtrust-worker products --bundle FILE`: the account's D-Trust products and their
//! rules (Identity Manager's "Search" button), marked against `certificateTemplates`.

use std::io::Write;
use std::process::ExitCode;

use crate::bundle::Bundle;
use crate::dtrust::wire::Product;
use crate::dtrust::Client;

pub(super) async fn run(bundle: &Bundle, out: &mut dyn Write) -> std::io::Result<ExitCode> {
    let client = match Client::new(bundle) {
        Ok(c) => c,
        Err(e) => {
            writeln!(out, "error: {e}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let products = match client.products().await {
        Ok(p) => p,
        Err(e) => {
            writeln!(out, "error: {e}\nhint: {}", e.hint())?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let templates = &bundle.settings.certificate_templates;
    writeln!(
        out,
        "D-Trust products at {} ({} found)",
        client.base_url(),
        products.len()
    )?;
    print_table(&products, templates, out)?;
    for product in &products {
        writeln!(out)?;
        writeln!(
            out,
            "{}{}",
            product.id,
            if product.name.is_empty() {
                String::new()
            } else {
                format!(" ({})", product.name)
            }
        )?;
        for (rdn, pattern) in &product.rdn_patterns {
            writeln!(out, "  {rdn:<24}{pattern}")?;
        }
        if let Some(pattern) = &product.revocation_password_pattern {
            writeln!(out, "  {:<24}{pattern}", "revocation password")?;
        }
        if let Some(issuer) = &product.issuer_dn {
            writeln!(out, "  {:<24}{issuer}", "issuer")?;
        }
    }
    let missing: Vec<&str> = templates
        .iter()
        .filter(|t| !products.iter().any(|p| &p.id == *t))
        .map(String::as_str)
        .collect();
    writeln!(out)?;
    if missing.is_empty() {
        writeln!(
            out,
            "every product of certificateTemplates is on the account"
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(
            out,
            "warning: certificateTemplates lists {} not on the account; orders for them fail with PRODUCT_NOT_ALLOWED",
            missing.join(", ")
        )?;
        Ok(ExitCode::FAILURE)
    }
}

fn print_table(
    products: &[Product],
    templates: &[String],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let rows: Vec<[String; 6]> = products
        .iter()
        .map(|p| {
            [
                p.id.clone(),
                p.name.clone(),
                p.request_types
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                p.key_sizes
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                p.required_rdns.join(", "),
                if templates.contains(&p.id) {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
            ]
        })
        .collect();
    let header = [
        "ID",
        "NAME",
        "REQUEST TYPES",
        "KEY SIZES",
        "REQUIRED RDNS",
        "IN TEMPLATES",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "  {}", line(&header.map(String::from)))?;
    for row in &rows {
        writeln!(out, "  {}", line(row))?;
    }
    Ok(())
}
